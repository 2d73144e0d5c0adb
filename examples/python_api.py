"""The Python API in a notebook's worth of cells: open a pool, evaluate, scale, look, preview, close.

Run it from anywhere: ``python examples/python_api.py``. In a notebook, paste the cells; the pool
runs on its own thread and event loop, so it does not mind the notebook's loop.
"""

from pathlib import Path

import umbridge

import balancer

HERE = Path(__file__).resolve().parent
MODEL = ["python", str(HERE.parent / "models" / "testmodel.py")]  # serves model "forward" on $PORT

# %% Open a pool: keyword arguments (or a dict, or the TOML file `balancer serve --config` reads:
# balancer.open_pool(HERE / "demo.toml")). Without a port it takes a free one.
with balancer.open_pool(servers=[{"name": "testmodel", "command": MODEL, "max_servers": 4}]) as pool:
    print(pool)  # <BalancerPool http://127.0.0.1:PORT scheduler=local specs=[testmodel]>

    # %% Any UM-Bridge client talks to pool.url; the first call starts a server.
    model = umbridge.HTTPModel(pool.url, "forward")
    print(model([[3.0]]))  # [[6.0]]

    # %% Keep two servers warm (as `balancer scale testmodel --min 2`), then look.
    pool.scale("testmodel", min=2, max=4)
    pool.wait_for_servers(2)
    status = pool.status()  # the document `balancer status --json` prints
    print(status["specs"]["testmodel"]["servers"], "calls completed:", status["calls"]["completed"])

    # %% What a SLURM job of this spec would run (nothing is submitted; no SLURM needed).
    print(pool.job_script("testmodel", scheduler="slurm"))

# %% The block's end closed the pool: calls in flight finished, the servers stopped.
print(pool.closed)  # True
