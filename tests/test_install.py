"""`pip install -e .` keeps an environment's own torch and megatron-core (a cluster container's).

setup.py states ranges; the exact versions live in constraints.txt. Asked, without the constraints
file, what installing the package into this venv would do (pip's `--dry-run --report`), pip must
install megatron-demix alone: the torch, megatron-core and every other requirement already here
satisfy the ranges, so none is replaced.
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

from tests.conftest import REPO


def _dry_run(tmp_path, *requirement) -> dict:
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--report", str(report), "--quiet",
         "--no-build-isolation", "--disable-pip-version-check", *requirement],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(report.read_text())


def test_editable_install_keeps_the_installed_torch_and_megatron_core(tmp_path):
    report = _dry_run(tmp_path, "-e", ".[test,dali,tensorboard]")
    install = {item["metadata"]["name"]: item["metadata"]["version"] for item in report["install"]}
    assert install == {"megatron-demix": "0.1.0"}, install
    assert version("torch").startswith("2.") and version("megatron-core") >= "0.16.1"


def test_the_report_does_list_what_would_change(tmp_path):
    # The control: a requirement the environment does not satisfy shows up in the same report.
    wanted = "megatron-core==0.16.1" if version("megatron-core") != "0.16.1" else "megatron-core==0.19.2"
    report = _dry_run(tmp_path, "--ignore-requires-python", "--no-deps", wanted)
    assert [item["metadata"]["name"] for item in report["install"]] == ["megatron-core"]
