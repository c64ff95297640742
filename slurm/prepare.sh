#!/bin/bash
# Data preparation as a SLURM job: tokenizer + Megatron indexed datasets for every dataset.
#   sbatch slurm/prepare.sh configs/demo.yaml
# Site values (partition, account, time, CPUs) come from sbatch flags or SBATCH_* variables,
# e.g. `SBATCH_PARTITION=cpu sbatch --cpus-per-task 32 slurm/prepare.sh exp.yaml`.
#SBATCH --job-name=demix-prepare
#SBATCH --ntasks=1
#SBATCH --output=demix-prepare-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch slurm/prepare.sh EXPERIMENT.yaml}
# sbatch runs a copy of this script; SLURM_SUBMIT_DIR is where it was submitted from.
cd "${SLURM_SUBMIT_DIR:-.}"
PYTHON=${DEMIX_PYTHON:-.venv/bin/python}
exec "$PYTHON" -m megatron_demix.cli prepare --config "$CONFIG" --workers "${SLURM_CPUS_PER_TASK:-1}"
