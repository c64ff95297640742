"""Standard errors lm-eval leaves out: bits per byte, a ratio of sums over documents."""
from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_demix.eval.proxies import fill_ratio_stderrs, ratio_stderr


def test_ratio_stderr_agrees_with_the_jackknife():
    rng = np.random.default_rng(0)
    size = rng.integers(200, 4000, 60).astype(float)
    loglikelihood = -size * rng.normal(1.5, 0.3, 60)
    pairs = list(zip(loglikelihood, size))
    n = len(pairs)
    leave_one_out = np.array([np.delete(loglikelihood, i).sum() / np.delete(size, i).sum() for i in range(n)])
    jackknife = math.sqrt((n - 1) / n * np.sum((leave_one_out - leave_one_out.mean()) ** 2))
    assert ratio_stderr(pairs) == pytest.approx(jackknife, rel=0.05)
    assert math.isnan(ratio_stderr(pairs[:1]))


def test_bits_per_byte_stderr_is_filled_from_the_logged_samples_only_where_missing():
    pairs = [(-1000.0, 800), (-1500.0, 1000), (-300.0, 400)]
    results = {"results": {"t": {"bits_per_byte,none": 1.0, "bits_per_byte_stderr,none": "N/A"},
                           "u": {"bits_per_byte,none": 1.0, "bits_per_byte_stderr,none": 0.25}},
               "samples": {"t": [{"filter": "none", "bits_per_byte": p} for p in pairs],
                           "u": [{"filter": "none", "bits_per_byte": p} for p in pairs]}}
    fill_ratio_stderrs(results)
    assert results["results"]["t"]["bits_per_byte_stderr,none"] == pytest.approx(ratio_stderr(pairs) / math.log(2))
    assert results["results"]["u"]["bits_per_byte_stderr,none"] == 0.25  # lm-eval's own stays
