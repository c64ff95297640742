"""The `eval:` section: which benchmarks score a proxy, and how they form the capability domains."""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Literal

from megatron_demix.config.base import ConfigError, fail
from megatron_demix.runtime.dtypes import dtype_names

Precision = Literal[("auto", *dtype_names(computes=True))]


class EvalInputError(ConfigError):
    """Bad evaluation input (model_args, manifest line, task name): the message names it and the fix."""


@dataclass(frozen=True, kw_only=True, slots=True)
class EvalConfig:
    """Benchmarks per capability domain (the paper: general, math, code) and how a proxy is scored."""

    tasks: dict[str, list[str]] = field(default_factory=dict)
    """Domain name -> lm-eval task names (or, with `command`, metric names of its JSON output);
    empty means the built-in tasks that `demix prepare` writes for the built-in corpora."""
    metrics: dict[str, str] = field(default_factory=dict)
    """Task name -> the lm-eval metric that scores it (e.g. `piqa: acc_norm`); unset: the task's first metric."""
    lower_is_better: list[str] = field(default_factory=list)
    """Metric (or task) names whose value enters a domain score negated (perplexity, bits per byte)."""
    include_path: str | None = None
    """Directory of the user's own lm-eval task YAMLs (lm-eval's --include_path)."""
    command: str | None = None
    """Evaluate with another harness: a shell command template run once per mixture, with the
    placeholders {mixture} (JSON file {candidate: ratio}), {checkpoint} (the proxy merged to disk,
    torch_dist), {hf_checkpoint} (the proxy exported as a Hugging Face model directory, streamed from
    the components), {output} (where the command writes a flat JSON {metric: number}) and {workdir}.
    A proxy is built only when its placeholder is named, and deleted after its evaluation unless
    `keep_proxies`. Unset: the built-in lm-eval evaluation, in the task's own process (eval/proxies.py: ProxyEvaluator)."""
    keep_proxies: bool = False
    """Keep the proxies `command`'s {checkpoint} and {hf_checkpoint} build (in the search's
    `work/<mixture id>/` directories) instead of deleting each after its evaluation: a model's size each."""
    timeout: float | None = None
    """Seconds one mixture's evaluation may take (with `command`: its {checkpoint} merge and the command, whose
    processes are then ended; built-in: that mixture's scoring in the task's process, interrupted by SIGALRM);
    past it the mixture counts as a failed evaluation, retried as any other (search.max_retries). Unset: no limit."""
    batch_size: int = 8
    """Sequences per forward pass of the `megatron-demix` lm-eval model."""
    max_length: int | None = None
    """Longest sequence given to the model; unset: the model's seq_length."""
    limit: int | None = None
    """At most this many examples per task (lm-eval's --limit)."""
    builtin_questions: int = 100
    """Multiple-choice items per domain in the built-in tasks (fewer when the held-out documents run out)."""
    builtin_documents: int = 20
    """Held-out documents per domain in the built-in bits-per-byte tasks."""
    cache_components: Literal["auto", "always", "never"] = "auto"
    """Many mixtures per job: hold every component in memory and recompute the model in place per
    mixture (`always`), merge-on-load from disk per mixture (`never`), or decide by the components'
    size against the available memory (`auto`: cache when they take under half of it)."""
    dtype: Precision = "auto"
    """Evaluation precision: `auto` is bf16 on GPU hosts, fp32 on CPU."""

    def __post_init__(self):
        if self.batch_size < 1:
            fail("batch_size", f"{self.batch_size} must be >= 1")
        for domain, names in self.tasks.items():
            if not names:
                fail(f"tasks.{domain}", "lists no task: name at least one lm-eval task (or metric) per domain")
        if self.builtin_questions < 1 or self.builtin_documents < 1:
            fail("builtin_questions", "builtin_questions and builtin_documents must be >= 1")
        if self.timeout is not None and not self.timeout > 0:
            fail("timeout", f"{self.timeout} must be > 0 seconds (or unset for no limit)")
        if self.limit is not None and self.limit < 1:
            fail("limit", f"{self.limit} must be >= 1 (or unset for every example)")


def domain_scores(metrics: dict[str, float], tasks: dict[str, list[str]], lower_is_better=()) -> dict[str, float]:
    """Each domain's score: the mean of its tasks' metric values, oriented so that higher is better.

    `metrics` maps a task (or metric) name to its primary value; a name listed in `lower_is_better`
    enters negated. A name a domain lists but `metrics` lacks is an error, never a silent 0 (the
    reference code's choice), so one missing benchmark cannot move a ranking.
    """
    scores = {}
    for domain, names in tasks.items():
        missing = [n for n in names if n not in metrics]
        if missing:
            raise KeyError(f"domain {domain!r}: no value for {', '.join(missing)} (have: {', '.join(sorted(metrics)) or 'nothing'})")
        values = [-float(metrics[n]) if n in lower_is_better else float(metrics[n]) for n in names]
        scores[domain] = sum(values) / len(values)
    return scores


def domain_stderrs(stderrs: dict[str, float], tasks: dict[str, list[str]]) -> dict[str, float]:
    """Each domain score's standard error, from its tasks' (independent samples): sqrt(sum se^2) / n.
    A domain with a task lacking a standard error has none (left out), rather than a made-up one."""
    return {domain: math.sqrt(sum(stderrs[n] ** 2 for n in names)) / len(names)
            for domain, names in tasks.items() if all(n in stderrs for n in names)}
