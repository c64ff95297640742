"""A mixture file names component weights; the experiment says where each component's checkpoint is.

    mixture.json:  {"code": 0.3, "math": 0.5, "prose": 0.2}
                   (or {"weights": {...}, ...other fields...}, as the search writes it)
    inputs, weights, base = mixture_inputs(experiment, "mixture.json")

Every candidate dataset of the experiment must have a weight (0 is allowed), and no other name:
a proxy built from a partial mixture would silently answer a different question.
"""
from __future__ import annotations

import json
from pathlib import Path

from megatron_demix.merge.io import MergeInputError


def read_mixture(source: str | Path | dict) -> dict[str, float]:
    where = "mixture" if isinstance(source, dict) else str(source)
    if isinstance(source, dict):
        data = source
    else:
        try:
            data = json.loads(Path(source).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise MergeInputError(f"--mixture {source}: unreadable ({error}); expected a JSON object {{component: weight}}") from None
    if isinstance(data, dict) and isinstance(data.get("weights"), dict):
        data = data["weights"]
    if not isinstance(data, dict) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in data.values()):
        raise MergeInputError(f"{where}: expected a JSON object {{component: weight}} with numeric weights")
    return {str(k): float(v) for k, v in data.items()}


def mixture_inputs(experiment, source: str | Path | dict) -> tuple[list[Path], list[float], Path]:
    """(component checkpoints, their weights, the base checkpoint) for a mixture of `experiment`."""
    mixture = read_mixture(source)
    names = [d.name for d in experiment.candidates]
    missing, unknown = [n for n in names if n not in mixture], sorted(set(mixture) - set(names))
    if missing or unknown:
        raise MergeInputError(
            f"mixture {source if not isinstance(source, dict) else ''} has {len(mixture)} weight(s) for the"
            f" {len(names)} components {', '.join(names)}"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    paths = experiment.paths
    return [paths.checkpoint(n) for n in names], [mixture[n] for n in names], paths.checkpoint("base")
