#!/bin/bash
# One UM-Bridge model server as a HyperQueue task, for umbridge-balancer (scheduler = "hyperqueue").
#
# Name it in the config: `job_script = "hq_scripts/job.sh"` in a [[servers]] table, or keep one
# script per model, `hq_scripts/job_<model>.sh`, each named by its own [[servers]] table (what the
# reference load balancer picks by file name, our config says explicitly).
#
# For every server the balancer submits one HQ task that runs, on a worker,
#     python -m balancer.launcher -- bash <this script>
# The launcher exports PORT, waits until the model answers /Info there, registers it with the
# balancer and keeps it on a lease. So this script only starts the model on $PORT, with `exec`:
# the model stays the task's process, under HyperQueue's control. No `&`, no `sleep infinity`, no
# url file: the launcher does all that (and writes url-<jobid>.txt too when
# UMBRIDGE_LOADBALANCER_COMM_FILEDIR is set, for tools written for the reference).
#
# The balancer reads these #HQ lines as `hq submit job.sh` would (they must come before the first
# command):
#   --cpus=N                CPUs of the task; `resources.cpus` in the config wins when set
#   --resource NAME=AMOUNT  any HQ resource the workers provide, e.g. gpus/nvidia=1
#   --time-request=DURATION start only on a worker with at least this much time left
# Other options (--time-limit, --stdout, --name, ...) are ignored: the Python API cannot set them
# and the balancer chooses logs itself (<run dir>/logs/<server id>.log).
#
# HQ sets OMP_NUM_THREADS to the task's CPU count; `threads = N` in the [[servers]] table overrides.

#HQ --cpus=1
#HQ --time-request=1m

# CHANGE ME: your model server, listening on $PORT.
exec python3 "$(dirname "$0")/../models/testmodel.py"
