#!/bin/bash
# Train the DeMix component models as a SLURM array: task i trains component i (the i-th candidate
# dataset of the experiment), continuing from the base checkpoint.
#
#   sbatch --array=0-2 slurm/train_component.sh configs/demo.yaml      # one task per candidate (3 here)
#   sbatch --array=0-6 -N 2 --ntasks-per-node=8 --gpus-per-node=8 -p gpu \
#       slurm/train_component.sh configs/paper.yaml --tensor-model-parallel-size 2
#   sbatch --array=3 slurm/train_component.sh configs/paper.yaml       # retrain component 3 only
#   DEMIX_COMPONENT=base sbatch --array=0 slurm/train_component.sh configs/demo.yaml   # the base model
#
# --array is required: the script cannot resubmit itself with every sbatch flag it was given, so a
# job without it stops at once (exit 2, nothing trained) and its log names the --array to add.
# `demix train --config X` counts the candidates and submits the base and the array for you, with
# the resources of the experiment's cluster.stages.train. `demix check --config X` prints the count.
# Arguments after the experiment file go to the trainer (megatron_demix.commands.train; Megatron-style flags:
# --micro-batch-size, --lr, --save, ...). Submit from the repository root (or set DEMIX_REPO).
#
# Site values: override the #SBATCH defaults with sbatch flags (-p, -A, -t, -N, --ntasks-per-node =
# processes per node, one per GPU; --gpus-per-node) or SBATCH_* variables, and the environment:
#   DEMIX_PYTHON      interpreter (default: $DEMIX_REPO/.venv/bin/python, else python3)
#   DEMIX_SRUN_ARGS   extra srun flags, e.g. "--container-image=nvcr.io/nvidia/pytorch:25.01-py3"
#   DEMIX_COMPONENT   what to train instead of the array task: base, a candidate name or index
# Outside SLURM (`DEMIX_TASK_ID=0 DEMIX_NTASKS=2 bash slurm/train_component.sh exp.yaml`, as the local
# executor runs it) the ranks are started with torchrun on this machine (one rank: directly).
#
# Preemption and time limits: --requeue lets SLURM restart a preempted task. 120 s before the time
# limit SLURM sends USR1 to this script, which first has the ranks save (SIGTERM: they finish the
# current iteration, save a checkpoint and exit), waits for them, and only then requeues the task,
# so the save never races SLURM's kill. The restarted task resumes from the latest checkpoint in its
# save directory (model, optimizer, schedule, data position, RNG). --save-interval bounds the work
# lost when a node dies without warning.
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

CONFIG=${1:?usage: sbatch --array=0-N slurm/train_component.sh <experiment.yaml> [launch/train_component.py flags]}
shift
REPO=${DEMIX_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
# The interpreter: DEMIX_PYTHON (the executor passes its own), else the checkout's .venv, else python3.
PYTHON=${DEMIX_PYTHON:-$([[ -x $REPO/.venv/bin/python ]] && echo "$REPO/.venv/bin/python" || command -v python3)}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# A bad experiment file fails here, in one line, before any rank starts.
"$PYTHON" -m megatron_demix.cli check --config "$CONFIG"

TASK=${SLURM_ARRAY_TASK_ID:-${DEMIX_TASK_ID:-}}
if [[ -z "$TASK" && -z "${DEMIX_COMPONENT:-}" ]]; then
    COUNT=$("$PYTHON" -c 'import sys; from megatron_demix.experiment import load_experiment
print(len(load_experiment(sys.argv[1]).candidates))' "$CONFIG")
    echo "slurm/train_component.sh: error: no array task: submit one task per candidate with" \
         "sbatch --array=0-$((COUNT - 1)) [your flags] slurm/train_component.sh $CONFIG" \
         "(DEMIX_COMPONENT=base for the base model; \`demix train --config $CONFIG\` submits both)" >&2
    exit 2
fi
COMPONENT=${DEMIX_COMPONENT:-$TASK}
# --exit-signal-handler: on SIGTERM (preemption, scancel, the save-then-requeue below) save, then exit.
LAUNCH=(-m megatron_demix.commands.train --config "$CONFIG" --component "$COMPONENT" --exit-signal-handler "$@")

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    # Not under SLURM (the local executor sets DEMIX_TASK_ID / DEMIX_NTASKS): torchrun starts the ranks;
    # one rank needs no launcher (a lone process makes its own one-process group), and torchrun's own
    # start-up (it imports torch) would cost seconds of every small local job.
    echo "$(date -u +%FT%TZ) component $COMPONENT of $CONFIG on this machine, ${DEMIX_NTASKS:-1} process(es)"
    if [[ "${DEMIX_NTASKS:-1}" == 1 ]]; then
        exec "$PYTHON" "${LAUNCH[@]}"
    fi
    exec "$(dirname "$PYTHON")/torchrun" --standalone --nproc-per-node "$DEMIX_NTASKS" "${LAUNCH[@]}"
fi

TASK_JOB=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
REQUEUE=""
save_then_requeue() {
    echo "$(date -u +%FT%TZ) USR1 (time limit near): the ranks save a checkpoint, then ${TASK_JOB:-$SLURM_JOB_ID} is requeued"
    REQUEUE=1
    # To the ranks of this job's steps, not to srun (srun would kill the step) nor to this shell.
    scancel --signal=TERM "$SLURM_JOB_ID"
}

echo "$(date -u +%FT%TZ) component $COMPONENT of $CONFIG on $SLURM_JOB_NUM_NODES node(s), $SLURM_NTASKS process(es)"
# srun sets each rank's SLURM_PROCID/SLURM_NTASKS; the launcher derives the rendezvous from them.
# It runs in the background so bash can take the USR1 trap while training runs.
# shellcheck disable=SC2086
srun --kill-on-bad-exit=1 ${DEMIX_SRUN_ARGS:-} "$PYTHON" "${LAUNCH[@]}" &
SRUN=$!
trap save_then_requeue USR1
# `wait` also returns when USR1 arrives (after the trap ran); keep waiting while srun lives.
while ! wait "$SRUN" && kill -0 "$SRUN" 2>/dev/null; do :; done
status=0
wait "$SRUN" || status=$?
if [[ -n "$REQUEUE" ]]; then
    if [[ $status -ne 0 ]]; then
        echo "the save on USR1 failed (srun exit $status): the requeued task resumes from the last complete checkpoint"
    fi
    echo "$(date -u +%FT%TZ) requeueing ${TASK_JOB:-$SLURM_JOB_ID}; it resumes from the latest checkpoint"
    scontrol requeue "${TASK_JOB:-$SLURM_JOB_ID}"
    exit 0
fi
exit $status
