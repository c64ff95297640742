#!/bin/bash
# Data preparation as a SLURM job: tokenizer + Megatron indexed datasets for every dataset of the
# experiment (`demix train` and `demix run` submit it as the `prepare` stage).
#
#   sbatch slurm/prepare.sh configs/demo.yaml
#   sbatch -p cpu -c 32 -t 12:00:00 slurm/prepare.sh configs/paper.yaml
#
# Tokenizer worker processes: the experiment's prepare.workers (ask for as many cores with -c).
# Submit from the repository root (or set DEMIX_REPO). Site values (partition, account, time, CPUs)
# come from sbatch flags, SBATCH_* variables, or the experiment's cluster.stages.prepare when
# `demix` submits it; the environment:
#   DEMIX_PYTHON      interpreter (default: $DEMIX_REPO/.venv/bin/python, else python3)
#SBATCH --job-name=demix-prepare
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch slurm/prepare.sh EXPERIMENT.yaml}
REPO=${DEMIX_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
# The interpreter: DEMIX_PYTHON (the executor passes its own), else the checkout's .venv, else python3.
PYTHON=${DEMIX_PYTHON:-$([[ -x $REPO/.venv/bin/python ]] && echo "$REPO/.venv/bin/python" || command -v python3)}
# The repository's package first, whichever interpreter runs it; the config path stays relative to here.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m megatron_demix.cli prepare --config "$CONFIG"
