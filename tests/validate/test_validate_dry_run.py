"""`demix validate` says what it will train, and which `validate:` settings are defaults, before it starts;
`--dry-run` prints only that and writes nothing."""
from __future__ import annotations

import subprocess

import yaml

from tests.conftest import REPO, VENV_BIN

DEMIX = str(VENV_BIN / "demix")


def _validate(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([DEMIX, "validate", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_the_demo_config_without_a_validate_section_shows_its_49_trainings_and_writes_nothing(tmp_path):
    out = _validate("--config", REPO / "configs" / "demo.yaml", "--work-dir", tmp_path / "work", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "references 16 (default), seed 7 (default)" in out.stdout and "proxy_budgets [0.125, 0.5] (default)" in out.stdout
    assert "7 of 7 models still to train" in out.stdout and "then 49 trainings from the base (2,692 iterations" in out.stdout
    for line in ("16 x reference (100 iterations each)", "16 x trained-0.125x (12 iterations each)",
                 "16 x trained-0.5x (50 iterations each)", "1 x quality (prior) (100 iterations each)",
                 "71 evaluations (16 merged proxies, the 6 components alone", "every validate: setting is its default"):
        assert line in out.stdout, out.stdout
    assert not (tmp_path / "work").exists(), "a dry run writes nothing"


def test_a_run_prints_its_plan_with_the_chosen_settings_before_it_starts(tmp_path):
    # The prepare job fails on the missing file: the plan came first.
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({
        "name": "x", "work_dir": str(tmp_path / "work"), "cluster": {"executor": "local"},
        "datasets": [{"name": "general", "role": "general", "builtin": "prose"}, {"name": "notes", "path": str(tmp_path / "missing.jsonl")}],
        "validate": {"references": 4, "proxy_budgets": [0.5]}}))
    out = _validate("--config", config)
    assert out.returncode == 1 and "job prepare" in out.stderr, out.stderr[-2000:]
    assert out.stdout.startswith("demix validate plan: references 4, seed 7 (default)")
    assert "then 9 trainings from the base" in out.stdout and "4 x trained-0.5x (25 iterations each)" in out.stdout
    assert "is its default" not in out.stdout
