#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: SLURM + munge (Debian packages), then .venv with
# the package and its test requirements. Re-running does only what is missing.
#   bash scripts/bootstrap.sh          # as root, or with sudo available
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=()
for bin in slurmctld slurmd sbatch munged; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need_apt+=("$bin")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[bootstrap] installing SLURM and munge from Debian (missing: ${need_apt[*]})"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.demix-installed
want=$(cat setup.py | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing megatron-demix and its requirements into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # dali and tensorboard are optional for users; the tests exercise both.
  .venv/bin/python -m pip install -q -e '.[test,dali,tensorboard]'
  echo "$want" > "$stamp"
fi
echo "[bootstrap] ready: $(.venv/bin/python -W ignore -c 'import torch, megatron.core as m; print("torch", torch.__version__, "megatron-core", m.__version__)')"
