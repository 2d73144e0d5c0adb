#!/bin/bash
# A HyperQueue allocation queue: HQ submits SLURM (or PBS) jobs that each run an HQ worker, as
# model servers wait for one, and lets idle workers go.
#
# Two ways to use it with umbridge-balancer:
#  * You run the HQ server: `hq server start &`, then this script, then the balancer with
#    [backend] mode = "server" (server_dir defaults to $HQ_SERVER_DIR, else set it).
#  * The balancer runs it: [backend] mode = "hq" starts `hq server start --journal` and adds each
#    entry of `alloc`, the arguments after `hq alloc add`, e.g.
#        alloc = ["slurm --time-limit 1h --idle-timeout 5m --backlog 1 --max-worker-count 4 -- --partition=cpu"]
#    and removes those queues again when it stops.
#
# Size workers to the servers: a server whose #HQ/--cpus or --resource no worker of any queue
# provides waits forever. HQ passes everything after `--` to sbatch/qsub verbatim (partition,
# account, memory); it sets the walltime and node count itself, so leave those out.

set -euo pipefail

hq alloc add slurm \
    --time-limit 1h \
    --idle-timeout 5m \
    --backlog 1 \
    --max-worker-count 4 \
    --cpus 4 \
    -- --partition=cpu  # CHANGE ME: your sbatch arguments
