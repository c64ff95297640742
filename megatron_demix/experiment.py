"""The experiment file: one YAML that drives every stage (prepare, train, merge, eval, search).

    name: demo
    work_dir: runs/demo            # relative paths resolve against the current directory
    datasets:
      - {name: general, role: general, builtin: prose}
      - {name: code, builtin: code}
      - {name: notes, path: /data/notes.jsonl, text_field: body}
    tokenizer: {vocab_size: 6144}
    prepare: {workers: 2}
    model: {preset: tiny}          # or {from_hf: /models/Qwen3-0.6B}: start from an open model (hf/from_hf.py)
    training: {...}  merge: {...}  eval: {...}  search: {...}  cluster: {...}

`load_experiment(path)` validates the whole file and returns an `ExperimentConfig`; every error
names the file, the key and the allowed values. Loading does no stage's I/O: a `model.from_hf`
section is expanded from the Hugging Face directory by the commands (`cli.load_experiment_file`),
which write the resolved copy every job reads; here only a resolved one is accepted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from megatron_demix.cluster.config import ClusterConfig
from megatron_demix.config.base import ConfigError, build, fail
from megatron_demix.config.paths import WorkPaths
from megatron_demix.data.config import DatasetConfig, PrepareConfig, TokenizerConfig
from megatron_demix.eval.config import EvalConfig
from megatron_demix.merge.config import MergeConfig
from megatron_demix.model.config import ModelConfig, check_parallel_fits, expand_preset
from megatron_demix.search.config import SearchConfig
from megatron_demix.training.config import TrainingConfig
from megatron_demix.validate.config import ValidateConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class ExperimentConfig:
    """Everything one DeMix experiment needs; sections are documented in their own modules."""

    name: str
    """Short name of the experiment (job names, reports)."""
    work_dir: str
    """Root of every output: prepared data, tokenizer, checkpoints, proxies, evaluations, reports."""
    datasets: list[DatasetConfig]
    """The general dataset (exactly one, `role: general`) and the candidates, one component each."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """See `tokenizer:` below."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """See `prepare:` below."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """See `model:` below."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """See `training:` below."""
    merge: MergeConfig = field(default_factory=MergeConfig)
    """See `merge:` below."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """See `eval:` below."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """See `search:` below."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """See `cluster:` below."""
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    """See `validate:` below."""

    def __post_init__(self):
        names = [d.name for d in self.datasets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            fail("datasets", f"duplicate dataset name(s) {', '.join(duplicates)}: names must be unique")
        general = [d.name for d in self.datasets if d.role == "general"]
        if len(general) != 1:
            fail("datasets", f"exactly one dataset needs role: general (found {len(general)}: {general})")
        if not self.candidates:
            fail("datasets", "no candidate datasets: add at least one with role: candidate")
        self._check_parallel_layout()

    def _check_parallel_layout(self) -> None:
        """Cross-section rules, checked here so a bad layout fails before data is prepared or jobs submitted."""
        tp, pp = self.training.tensor_model_parallel_size, self.training.pipeline_model_parallel_size
        try:
            check_parallel_fits(self.model, tp, pp)
        except ConfigError as error:
            fail("training", str(error))
        ranks = self.train_ranks
        if ranks % (tp * pp):
            fail("cluster.stages.train", f"{ranks} processes per job (nodes x ntasks_per_node) is not a multiple of"
                 f" tensor x pipeline parallel = {tp * pp}")
        merge_ranks = self.cluster.ranks("merge", self.merge.ranks)
        if merge_ranks != self.merge.ranks:
            fail("cluster.stages.merge", f"nodes x ntasks_per_node = {merge_ranks} differs from merge.ranks={self.merge.ranks}:"
                 " set one of them")

    @property
    def train_ranks(self) -> int:
        """Processes per training job: the train stage's nodes x ntasks_per_node, else one model replica (TP x PP)."""
        training = self.training
        return self.cluster.ranks("train", training.tensor_model_parallel_size * training.pipeline_model_parallel_size)

    @property
    def general(self) -> DatasetConfig:
        return next(d for d in self.datasets if d.role == "general")

    @property
    def candidates(self) -> list[DatasetConfig]:
        """The candidate datasets, in file order: component i trains on candidates[i]."""
        return [d for d in self.datasets if d.role == "candidate"]

    def dataset(self, name: str) -> DatasetConfig:
        for d in self.datasets:
            if d.name == name:
                return d
        raise ConfigError(f"no dataset named {name!r}; the experiment has {', '.join(d.name for d in self.datasets)}")

    @property
    def paths(self) -> WorkPaths:
        return WorkPaths(Path(self.work_dir))

    @property
    def component_checkpoints(self) -> dict[str, Path]:
        """Candidate -> its component's save root, in candidate order."""
        return {d.name: self.paths.checkpoint(d.name) for d in self.candidates}

    def proxy(self, mixture, settings: MergeConfig | None = None):
        """The proxy of `mixture` (a JSON file or dict over the candidates) with the `merge:` section (or `settings`)."""
        from megatron_demix.merge.proxy import mixture_proxy

        return mixture_proxy(mixture, self.component_checkpoints, settings or self.merge, self.paths.checkpoint("base"))


def load_experiment(path: str | os.PathLike, overrides: dict | None = None) -> ExperimentConfig:
    """Read and validate the experiment file at `path`; `overrides` replace top-level keys."""
    return experiment_from_dict(read_experiment_file(path, overrides), str(path))


def read_experiment_file(path: str | os.PathLike, overrides: dict | None = None) -> dict:
    """The experiment file at `path` as a mapping (YAML checked, nothing else); `overrides` replace top-level keys."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{where}: cannot read the experiment file ({error.strerror}); pass an existing YAML with --config") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping with keys name, work_dir, datasets, ...")
    data.update(overrides or {})
    return data


def experiment_from_dict(data: dict, where: str = "experiment") -> ExperimentConfig:
    """Validate an experiment given as a dict (tests and the search build them in code)."""
    data = dict(data)
    model = data.get("model")
    if isinstance(model, dict) and model.get("from_hf") is not None:
        unresolved = [key for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads") if key not in model]
        if unresolved:
            fail(f"{where}: model", f"from_hf {model['from_hf']} is not expanded (no {', '.join(unresolved[:3])}, ...):"
                 " load the file with a demix command (cli.load_experiment_file), which fills the model section in"
                 " from the Hugging Face directory, or use the experiment.yaml it writes in the work dir")
    if "model" in data:
        data["model"] = expand_preset(data["model"], where=f"{where}: model")
    if isinstance(data.get("work_dir"), str):
        data["work_dir"] = os.path.abspath(os.path.expanduser(data["work_dir"]))
    return build(ExperimentConfig, data, where)


def dump_experiment(config: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write `config` as YAML atomically (temporary name, then rename)."""
    from megatron_demix.config.base import to_dict
    from megatron_demix.runtime.files import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(config), sort_keys=False))


def checkpoint_experiment(path: str | os.PathLike) -> ExperimentConfig:
    """The experiment a checkpoint was trained in (its common state's `config`)."""
    from megatron_demix.checkpoint.weights import checkpoint_config  # torch: not for reading an experiment file

    return experiment_from_dict(checkpoint_config(path), f"{path}: common state config")
