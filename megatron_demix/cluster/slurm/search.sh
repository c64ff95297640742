#!/bin/bash
# The mixture search driver as a job: it samples mixtures, submits each round's evaluations as an
# array (slurm/eval_proxy.sh), fits the predictor and writes the report under <work_dir>/search/.
#
#   sbatch slurm/search.sh configs/demo.yaml
#   sbatch -t 2-00:00:00 slurm/search.sh configs/paper.yaml --resume     # continue a stopped search
#
# The driver itself is light (one CPU); the evaluations get the eval stage's resources. Arguments
# after the experiment file go to the search command (python -m megatron_demix.commands.search: --resume, --executor). The job is requeued
# on preemption and always resumes: finished evaluations are kept and a round's array job still
# queued or running is re-attached, never submitted twice. Submit from the repository root (or set
# DEMIX_REPO).
#
# Site values: override the #SBATCH defaults with sbatch flags (-p, -A, -t) or SBATCH_* variables;
#   DEMIX_PYTHON      interpreter (default: $DEMIX_REPO/.venv/bin/python, else python3)
# Outside SLURM (`bash slurm/search.sh configs/demo.yaml`) the driver runs here.
#SBATCH --job-name=demix-search
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch slurm/search.sh EXPERIMENT.yaml [--resume] [--executor slurm]}
shift
REPO=${DEMIX_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
# The interpreter: DEMIX_PYTHON (the executor passes its own), else the checkout's .venv, else python3.
PYTHON=${DEMIX_PYTHON:-$([[ -x $REPO/.venv/bin/python ]] && echo "$REPO/.venv/bin/python" || command -v python3)}
cd "$REPO"

RESUME=()
# A requeued driver (SLURM_RESTART_COUNT > 0) continues where the previous run stopped.
if [[ "${SLURM_RESTART_COUNT:-0}" -gt 0 && " $* " != *" --resume "* ]]; then
    RESUME=(--resume)
fi
exec "$PYTHON" -m megatron_demix.commands.search --config "$CONFIG" "${RESUME[@]}" "$@"
