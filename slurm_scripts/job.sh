#!/bin/bash
# One UM-Bridge model server as a SLURM job, for umbridge-balancer (scheduler = "slurm").
#
# Name it in the config: `job_script = "slurm_scripts/job.sh"` in a [[servers]] table, or keep one
# script per model, `slurm_scripts/job_<model>.sh` (`load-balancer --scheduler=slurm` without
# --config picks up job.sh and every job_<model>.sh here, as the reference load balancer does).
#
# For every server the balancer submits a job (several at once: one job array) whose script is
# generated from this one: your #SBATCH lines below, then
#     python -m balancer.launcher -- bash <this script>
# The launcher exports PORT, waits until the model answers /Info there, registers it with the
# balancer and keeps it on a lease. So this script only starts the model on $PORT, with `exec`.
# No `&`, no `sleep infinity`, no url file: the launcher does all that (and writes
# url-<jobid>.txt too when UMBRIDGE_LOADBALANCER_COMM_FILEDIR is set, for tools written for the
# reference).
#
# #SBATCH lines are honoured as sbatch reads them (before the first command). Settings in the config
# win over them: [servers.resources] cpus (when not 1), memory, gpus, time_limit; partition,
# account, qos, sbatch_args. The balancer sets --job-name, --output/--error (RUN_DIR/logs), --array
# and --export itself. OMP_NUM_THREADS is set to the job's CPUs per server unless `env` sets it.
# Keep --time long: the balancer drains and replaces a server time_limit_margin_s (default 60 s)
# before its job's time limit, with no call lost.

#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00

# CHANGE ME: your model server, listening on $PORT.
exec python3 "$(dirname "$0")/../models/testmodel.py"
