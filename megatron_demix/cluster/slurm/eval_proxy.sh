#!/bin/bash
# Evaluate batches of mixtures as a SLURM array: task i runs line i of FOLDER/manifest.jsonl (one
# batch of mixtures, written by the search) and writes FOLDER/results/<i>.json, a success record
# with the mixtures' scores or an error record with the traceback and this log's path.
#
#   sbatch --array=0-7%4 slurm/eval_proxy.sh runs/demo/search/round-0/attempt-0
#   sbatch --array=3 slurm/eval_proxy.sh FOLDER          # re-run task 3 by hand
#
# The search (tools/search/run.py) writes the manifest and submits this script; you rarely submit
# it yourself. Each batch is evaluated by eval.command (a shell template per mixture), by merging
# the proxy to disk first when the template names {checkpoint}, or by the built-in lm-eval evaluation in
# the task's own process; a mixture already scored is never evaluated again.
# The {checkpoint} merge runs inside this task's own job step: its merge.ranks MPI ranks are started
# by mpiexec's fork launcher (a new srun step would wait for ever for the CPUs this step holds); give
# the eval stage CPUs for them (cluster.stages.eval.cpus_per_task). eval.timeout bounds each mixture's
# merge and command; scancel (SIGTERM) ends the task's child processes before the task itself.
# Submit from the repository root (or set DEMIX_REPO).
#
# Site values: override the #SBATCH defaults with sbatch flags (-p, -A, -t, --gpus-per-node,
# --cpus-per-task) or SBATCH_* variables (the search passes the experiment's eval stage resources),
# and the environment:
#   DEMIX_PYTHON      interpreter (default: $DEMIX_REPO/.venv/bin/python, else python3)
#   DEMIX_SRUN_ARGS   extra srun flags, e.g. "--container-image=nvcr.io/nvidia/pytorch:25.01-py3"
# Outside SLURM (`DEMIX_TASK_ID=0 bash slurm/eval_proxy.sh FOLDER`, as the local executor runs it)
# the task runs here directly.
#SBATCH --job-name=demix-eval
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

FOLDER=${1:?usage: sbatch --array=0-N slurm/eval_proxy.sh TASK_FOLDER}
REPO=${DEMIX_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
# The interpreter: DEMIX_PYTHON (the executor passes its own), else the checkout's .venv, else python3.
PYTHON=${DEMIX_PYTHON:-$([[ -x $REPO/.venv/bin/python ]] && echo "$REPO/.venv/bin/python" || command -v python3)}
cd "$REPO"

RUN=("$PYTHON" -m megatron_demix.cluster.tasks "$FOLDER")
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    exec "${RUN[@]}"
fi
exec srun --ntasks=1 ${DEMIX_SRUN_ARGS:-} "${RUN[@]}"
