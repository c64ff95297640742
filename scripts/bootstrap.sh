#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: SLURM + munge (Debian packages), then .venv with
# the package and its test requirements. Re-running does only what is missing.
#   bash scripts/bootstrap.sh            # .venv, as root or with sudo available
#   bash scripts/bootstrap.sh --compat   # .venv-compat: the same with the compatibility megatron-core
# Exact versions come from constraints.txt (pip install -c); setup.py holds only ranges.
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
# The default venv gets the megatron-core pinned in constraints.txt; --compat makes .venv-compat
# with the one on its `# compat:` line (the oldest supported release, CI's second run).
VENV=.venv
mcore=$(sed -n 's/^megatron-core==//p' constraints.txt)
if [ "${1:-}" = "--compat" ]; then
  VENV=.venv-compat
  mcore=$(sed -n 's/^# compat: megatron-core==//p' constraints.txt)
fi
[ -n "$mcore" ] || { echo "[bootstrap] constraints.txt: no megatron-core pin found" >&2; exit 2; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
# Every exact version comes from constraints.txt; only the megatron-core line differs per venv.
constraints=$VENV/constraints.txt
sed "s/^megatron-core==.*/megatron-core==$mcore/" constraints.txt > "$constraints.tmp"
mv "$constraints.tmp" "$constraints"
stamp=$VENV/.demix-installed
want=$(cat setup.py "$constraints" scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing megatron-demix with megatron-core $mcore into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # megatron-core first, on its own. From 0.17 its metadata says Python >= 3.12, but its cp311
  # wheels are built and import (compiled dataset helpers included): --ignore-requires-python
  # lets pip take them on this Python 3.11. The flag would let pip take any package that drops
  # 3.11, so it is used only here, where constraints.txt pins every version pip may pick.
  # From 0.19, `import megatron.core` imports triton (moe/ops/paged_stash.py) without declaring
  # it: a CUDA torch brings triton along, the CPU torch installed here does not.
  extra=()
  [ "$(printf '%s\n' 0.19 "$mcore" | sort -V | head -1)" = 0.19 ] && extra=(triton)
  "$VENV/bin/python" -m pip install -q -c "$constraints" --ignore-requires-python torch "megatron-core==$mcore" "${extra[@]}"
  # dali and tensorboard are optional for users; the tests exercise both. torch and megatron-core
  # are already there and satisfy setup.py's ranges, so this step keeps them.
  "$VENV/bin/python" -m pip install -q -c "$constraints" -e '.[test,dali,tensorboard]'
  echo "$want" > "$stamp"
fi
echo "[bootstrap] ready: $VENV: $("$VENV/bin/python" -W ignore -c 'import torch, megatron.core as m; print("torch", torch.__version__, "megatron-core", m.__version__)')"
