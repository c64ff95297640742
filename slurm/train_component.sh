#!/bin/bash
# Train the DeMix component models as a SLURM array: task i trains component i (the i-th candidate
# dataset of the experiment), continuing from the base checkpoint.
#
#   sbatch slurm/train_component.sh configs/demo.yaml            # submits the array over all candidates
#   sbatch --array=0-6 -N 2 --ntasks-per-node=8 --gpus-per-node=8 -p gpu \
#       slurm/train_component.sh configs/paper.yaml --tensor-model-parallel-size 2
#   sbatch --array=3 slurm/train_component.sh configs/paper.yaml  # retrain component 3 only
#   DEMIX_COMPONENT=base sbatch slurm/train_component.sh configs/demo.yaml   # the base model
#
# Without --array (and without DEMIX_COMPONENT) the job resubmits itself as an array with one task
# per candidate listed in the experiment, then ends. Arguments after the experiment file go to
# launch/train_component.py (Megatron-style flags: --micro-batch-size, --lr, --save, ...).
# Submit from the repository root (or set DEMIX_REPO).
#
# Site values: override the #SBATCH defaults with sbatch flags (-p, -A, -t, -N, --ntasks-per-node =
# processes per node, one per GPU; --gpus-per-node) or SBATCH_* variables, and the environment:
#   DEMIX_PYTHON      interpreter (default: $DEMIX_REPO/.venv/bin/python)
#   DEMIX_SRUN_ARGS   extra srun flags, e.g. "--container-image=nvcr.io/nvidia/pytorch:25.01-py3"
#   DEMIX_COMPONENT   what to train instead of the array task: base, a candidate name or index
# Outside SLURM (`DEMIX_TASK_ID=0 DEMIX_NTASKS=2 bash slurm/train_component.sh exp.yaml`, as the local
# executor runs it) the ranks are started with torchrun on this machine.
#
# Preemption and time limits: --requeue lets SLURM restart a preempted task; 120 s before the time
# limit SLURM sends USR1 and this script requeues the task itself. Either way the training processes
# get SIGTERM, save after the current iteration and exit; the restarted task resumes from the
# latest checkpoint in its save directory (model, optimizer, schedule, data position, RNG).
# --save-interval bounds the work lost when a node dies without warning.
#SBATCH --job-name=demix-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

CONFIG=${1:?usage: sbatch slurm/train_component.sh <experiment.yaml> [launch/train_component.py flags]}
shift
REPO=${DEMIX_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
PYTHON=${DEMIX_PYTHON:-$REPO/.venv/bin/python}

TASK=${SLURM_ARRAY_TASK_ID:-${DEMIX_TASK_ID:-}}
if [[ -z "$TASK" && -z "${DEMIX_COMPONENT:-}" ]]; then
    # One task per candidate dataset, in the order the experiment lists them.
    COUNT=$("$PYTHON" -c 'import sys; from megatron_demix.config.experiment import load_experiment
print(len(load_experiment(sys.argv[1]).candidates))' "$CONFIG")
    echo "submitting an array of $COUNT component tasks for $CONFIG"
    exec sbatch --array="0-$((COUNT - 1))" "$REPO/slurm/train_component.sh" "$CONFIG" "$@"
fi
COMPONENT=${DEMIX_COMPONENT:-$TASK}
# --exit-signal-handler: on SIGTERM (preemption, scancel, the requeue below) save, then exit.
LAUNCH=("$REPO/launch/train_component.py" --config "$CONFIG" --component "$COMPONENT" --exit-signal-handler "$@")

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    # Not under SLURM (the local executor sets DEMIX_TASK_ID / DEMIX_NTASKS): torchrun starts the ranks.
    echo "$(date -u +%FT%TZ) component $COMPONENT of $CONFIG on this machine, ${DEMIX_NTASKS:-1} process(es)"
    exec "$(dirname "$PYTHON")/torchrun" --standalone --nproc-per-node "${DEMIX_NTASKS:-1}" "${LAUNCH[@]}"
fi

TASK_JOB=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
requeue() {
    echo "time limit near: requeueing ${TASK_JOB:-$SLURM_JOB_ID}; it resumes from the latest checkpoint"
    scontrol requeue "${TASK_JOB:-$SLURM_JOB_ID}"
}
trap requeue USR1

echo "$(date -u +%FT%TZ) component $COMPONENT of $CONFIG on $SLURM_JOB_NUM_NODES node(s), $SLURM_NTASKS process(es)"
# srun sets each rank's SLURM_PROCID/SLURM_NTASKS; the launcher derives the rendezvous from them.
# It runs in the background so bash can take the USR1 trap while training runs.
# shellcheck disable=SC2086
srun --kill-on-bad-exit=1 ${DEMIX_SRUN_ARGS:-} "$PYTHON" "${LAUNCH[@]}" &
SRUN=$!
# `wait` also returns when USR1 arrives (after the trap ran); keep waiting while srun lives.
until wait $SRUN; do
    status=$?
    kill -0 $SRUN 2>/dev/null || exit $status
done
