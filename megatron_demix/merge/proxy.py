"""A mixture's proxy: the component checkpoints, their weights and the `merge:` settings, resolved in one place.

    proxy = mixture_proxy(mixture, experiment.component_checkpoints, experiment.merge)
    proxy.write("proxies/p0", comm=comm)          # tools/merge/run.py: to disk, on the MPI ranks
    source = proxy.open()                         # merge-on-load, the many-mixtures loop, the HF export
    fill_model(model, source, proxy.weights)

Every way of making a proxy goes through `Proxy`, so they agree on the inputs, the checked and
normalised weights, the method, scale and output dtype (`merge.dtype`): a proxy filled in memory
holds the bytes `tools/merge/run.py` writes for the same mixture.

mixture.json:  {"code": 0.3, "math": 0.5, "prose": 0.2}   (or {"weights": {...}, ...}, as the search writes it)
Every candidate must have a weight (0 is allowed), and no other name: a proxy built from a partial
mixture would silently answer a different question.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_demix.merge.config import MergeConfig
from megatron_demix.merge.io import MergeInputError
from megatron_demix.merge.methods import get_method


@dataclass(frozen=True)
class Proxy:
    """What one proxy is made from."""

    inputs: tuple[Path, ...]
    given: tuple[float, ...]
    """The weights as given (merge() normalises them itself, so the tool gets these)."""
    settings: MergeConfig
    base: Path | None
    """The base checkpoint of task arithmetic (merge() refuses one for a method that needs none)."""
    names: tuple[str, ...]
    """How errors name each input."""

    @property
    def weights(self) -> list[float]:
        """The weights the merge uses: checked and (with merge.normalize) normalised as `merge()` does."""
        from megatron_demix.merge.engine import check_weights

        return check_weights(self.given, self.names, get_method(self.settings.method), self.settings.normalize)

    def open(self):
        """The components planned for this proxy's merge (a `ComponentSource`; close it): fill a model or read tensors."""
        from megatron_demix.merge.sources import ComponentSource

        return ComponentSource.open(self.inputs, self.names, method=self.settings.method, base=self.base,
                                    scale=self.settings.scale, dtype=self.settings.dtype)

    def write(self, output, **options):
        """`merge()` this proxy to `output` (options: verify, overwrite, output_iteration, provenance, comm, log)."""
        from megatron_demix.merge.engine import merge

        return merge(self.inputs, self.given, output, self.settings, base=self.base, **options)


def checkpoints_proxy(paths, weights, settings: MergeConfig = MergeConfig(), *, base=None, names=None) -> Proxy:
    """The proxy of checkpoints given by path (`--inputs DIR:WEIGHT`, model_args components=)."""
    names = tuple(names or (f"component {i + 1} ({p})" for i, p in enumerate(paths)))
    return Proxy(tuple(map(Path, paths)), tuple(map(float, weights)), settings, None if base is None else Path(base), names)


def mixture_proxy(source: str | Path | dict, checkpoints: dict[str, Path], settings: MergeConfig, base: Path | None = None) -> Proxy:
    """The proxy of a mixture (a JSON file or dict {component: weight}) over `checkpoints` ({candidate: save root},
    in the experiment's order); `base`: the base checkpoint, used when `settings.method` needs one."""
    mixture = read_mixture(source)
    names = list(checkpoints)
    missing, unknown = [n for n in names if n not in mixture], sorted(set(mixture) - set(names))
    if missing or unknown:
        raise MergeInputError(
            f"mixture {source if not isinstance(source, dict) else ''} has {len(mixture)} weight(s) for the"
            f" {len(names)} components {', '.join(names)}"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return checkpoints_proxy(list(checkpoints.values()), [mixture[n] for n in names], settings,
                             base=base if get_method(settings.method).needs_base else None,
                             names=[f"component {n} ({p})" for n, p in checkpoints.items()])


def read_mixture(source: str | Path | dict) -> dict[str, float]:
    """{component: weight} from a mixture file or dict; a MergeInputError naming it when it is not one."""
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
