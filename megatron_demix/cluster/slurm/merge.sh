#!/bin/bash
# Merge component checkpoints into one proxy on N MPI ranks (one SLURM job, one node or several).
#
#   sbatch slurm/merge.sh --inputs ckpt/code:0.3 ckpt/math:0.7 --output proxies/p0 [--dtype bf16] [--verify]
#   sbatch -n 8 -t 0:30:00 -p cpu slurm/merge.sh --config exp.yaml --mixture mixture.json --output proxies/p1
#
# Every argument goes to the merge command (python -m megatron_demix.commands.merge; tools/merge/run.py). Submit from the repository root (or set DEMIX_REPO).
# Outside SLURM (no SLURM_JOB_ID: the local executor, or by hand) it runs the same merge with the
# venv's mpiexec and DEMIX_NTASKS ranks:   DEMIX_NTASKS=2 bash slurm/merge.sh --inputs ... --output ...
# Site values: override the #SBATCH defaults with sbatch flags (-n ranks, -t, -p, --account,
# --mem-per-cpu: each rank needs about 2x the largest stored chunk + 500 MB), and the environment:
#   DEMIX_PYTHON     interpreter (default: $DEMIX_REPO/.venv/bin/python, else python3)
#   DEMIX_SRUN_MPI   srun's --mpi plugin: pmi2 for MPICH (the pip `mpich` wheel), pmix for OpenMPI.
#                    Without one, srun starts N unconnected 1-rank processes; the tool refuses that.
#   DEMIX_SRUN_ARGS  extra srun flags (e.g. --container-image=... with Pyxis/enroot)
# The merge is I/O-bound: more ranks help until the file system saturates.
#SBATCH --job-name=demix-merge
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

REPO=${DEMIX_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
# The interpreter: DEMIX_PYTHON (the executor passes its own), else the checkout's .venv, else python3.
PYTHON=${DEMIX_PYTHON:-$([[ -x $REPO/.venv/bin/python ]] && echo "$REPO/.venv/bin/python" || command -v python3)}
MPI=${DEMIX_SRUN_MPI:-pmi2}

MERGE=("$PYTHON" -m megatron_demix.commands.merge "$@")

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    exec "$(dirname "$PYTHON")/mpiexec" -n "${DEMIX_NTASKS:-1}" "${MERGE[@]}"
fi
# --kill-on-bad-exit: should one rank die outside the tool's own error handling, end the others.
exec srun --mpi="$MPI" --kill-on-bad-exit=1 ${DEMIX_SRUN_ARGS:-} "${MERGE[@]}"
