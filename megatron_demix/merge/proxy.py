"""A mixture's proxy: the component checkpoints, their weights and the `merge:` settings, resolved in one place.

    proxy = mixture_proxy(mixture, experiment.component_checkpoints, experiment.merge)
    proxy.write("proxies/p0", comm=comm)          # tools/merge/run.py: to disk, on the MPI ranks
    source = proxy.open()                         # merge-on-load, the many-mixtures loop, the HF export
    fill_model(model, source, proxy.weights)
    write_proxies({"p0": proxy, "p1": other}, "proxies", comm=comm)   # proxies/p0, proxies/p1 from one read

Every way of making a proxy goes through `Proxy`, so they agree on the inputs, the checked and
normalised weights, the method, scale and output dtype (`merge.dtype`): a proxy filled in memory
holds the bytes `tools/merge/run.py` writes for the same mixture.

mixture.json:  {"code": 0.3, "math": 0.5, "prose": 0.2}   (or {"weights": {...}, ...}, as the search writes it)
Every candidate must have a weight (0 is allowed), and no other name: a proxy built from a partial
mixture would silently answer a different question.

mixtures file (`--mixtures`, many proxies from one read): a JSON list, or JSON lines, of
{"id": "p0", "weights": {"code": 0.3, ...}} (or "mixture" for "weights", as the search writes them); with
`--inputs` instead of an experiment, "weights" is a list in the order of the inputs.
"""
from __future__ import annotations

import json
import re
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


MIXTURE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A mixture id names its proxy's directory: no path separators, no leading dot."""


def read_mixture_list(path: str | Path) -> list[tuple[str, dict | list]]:
    """[(id, weights)] from a mixtures file (module docstring); a MergeInputError naming the file and the entry."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise MergeInputError(f"--mixtures {path}: unreadable ({error})") from None
    try:
        entries = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise MergeInputError(f"--mixtures {path}: not a JSON list nor JSON lines ({error})") from None
    found, seen = [], set()
    for n, entry in enumerate(entries, start=1):
        where = f"--mixtures {path}, entry {n}"
        weights = entry.get("weights", entry.get("mixture")) if isinstance(entry, dict) else None
        ident = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(ident, str) or not MIXTURE_ID.fullmatch(ident) or not isinstance(weights, (dict, list)):
            raise MergeInputError(f'{where}: expected {{"id": NAME, "weights": {{component: weight}}}} with NAME of letters,'
                                  " digits, '.', '_', '-' (it names the proxy's directory)")
        if ident in seen:
            raise MergeInputError(f"{where}: id {ident!r} appears twice; each proxy needs its own")
        seen.add(ident)
        found.append((ident, weights))
    if not found:
        raise MergeInputError(f"--mixtures {path}: no mixtures")
    return found


def write_proxies(proxies: dict[str, Proxy], folder: str | Path, **options):
    """`merge_many`: every proxy to `folder/<id>`, reading each component region once for all of them (options as
    `Proxy.write`'s, and `keep_done`). The proxies must share their components, base and `merge:` settings."""
    from megatron_demix.merge.engine import Target, merge_many

    first = next(iter(proxies.values()))
    for ident, proxy in proxies.items():
        if (proxy.inputs, proxy.base, proxy.settings) != (first.inputs, first.base, first.settings):
            raise MergeInputError(f"mixture {ident}: other components or merge settings than the first; a batch merges"
                                  " one set of components")
    targets = [Target(Path(folder) / ident, proxy.given, {"mixture_id": ident}) for ident, proxy in proxies.items()]
    return merge_many(first.inputs, targets, first.settings, base=first.base, **options)
