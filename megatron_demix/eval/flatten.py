"""lm-eval's results as the flat JSON `eval.command` reads, for harnesses run on an exported proxy.

    eval:
      command: >-
        lm_eval --model hf --model_args pretrained={hf_checkpoint} --tasks arc_easy,gsm8k
        --output_path {workdir}/lm_eval && python -m megatron_demix.eval.flatten {workdir}/lm_eval {output}

RESULTS is lm-eval's results file, or the --output_path directory (its newest `results_*.json`
is read). OUTPUT gets `{task: its first metric}` (the rule the built-in evaluation applies when
`eval.metrics` names none) and `{"task/metric,filter": value}` for every metric, in lm-eval's own
key spelling (`gsm8k/exact_match,strict-match`), so `eval.tasks` can name either; standard errors
and non-numbers are left out. Lower-is-better metrics (perplexities) go in `eval.lower_is_better`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from megatron_demix.eval.config import EvalInputError


def results_file(path: Path) -> Path:
    """`path` itself, or the newest `results_*.json` below the directory `path`."""
    if path.is_file():
        return path
    found = sorted(path.rglob("results_*.json"), key=lambda p: p.stat().st_mtime) if path.is_dir() else []
    if not found:
        raise EvalInputError(f"{path}: no lm-eval results (results_*.json); give lm_eval's --output_path or its file")
    return found[-1]


def flat_metrics(results: dict) -> dict[str, float]:
    """{task: first metric, "task/key": every metric} of lm-eval's results dict."""
    from megatron_demix.eval.proxies import primary_metric

    flat = {}
    for task, values in results["results"].items():
        numbers = {k: float(v) for k, v in values.items()
                   if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and math.isfinite(v)}
        if not numbers:
            continue
        flat[task] = primary_metric(results, task, None)[1]
        flat.update({f"{task}/{key}": value for key, value in numbers.items()})
    return flat


def flatten(source: Path, output: Path) -> dict[str, float]:
    from megatron_demix.runtime.files import atomic_write_json

    path = results_file(source)
    try:
        results = json.loads(path.read_text())
        flat = flat_metrics(results)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise EvalInputError(f"{path}: not an lm-eval results file ({type(error).__name__}: {error})") from None
    if not flat:
        raise EvalInputError(f"{path}: holds no numeric task metric")
    atomic_write_json(output, flat)
    return flat


def main(argv=None) -> int:
    from megatron_demix.runtime.errors import run_command

    parser = argparse.ArgumentParser(prog="python -m megatron_demix.eval.flatten", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="lm-eval's --output_path directory or one results_*.json")
    parser.add_argument("output", type=Path, help="the flat JSON to write (eval.command's {output})")
    args = parser.parse_args(argv)
    return run_command("megatron_demix.eval.flatten", flatten, args.results, args.output)


if __name__ == "__main__":
    sys.exit(main())
