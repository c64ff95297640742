"""The built-in corpora (data/builtin.py): tiers that really differ in quality, the paper's sizes, each
document and each math problem in exactly one corpus, deterministic."""
from __future__ import annotations

import ast
import re

from megatron_demix.data.builtin import CORPORA, builtin_corpora, builtin_documents, corpus_size
from megatron_demix.data.contamination import cross_corpus_overlaps

MEGABYTES = 0.3


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
        return True
    except SyntaxError:
        return False


def _noise_share(documents) -> float:
    """Share of the non-space characters that are noise characters of the low tier rare in Python (~ ` ^ $ ? ;)."""
    text = "".join(documents)
    return sum(c in "~`^$?;" for c in text) / max(sum(not c.isspace() for c in text), 1)


def test_corpora_are_tiered_in_size_and_no_document_is_in_two_of_them():
    corpora = builtin_corpora(MEGABYTES)
    assert tuple(corpora) == CORPORA
    sizes = {name: sum(len(d.encode()) for d in docs) for name, docs in corpora.items()}
    for domain in ("code", "math"):
        high, medium, low = (sizes[f"{domain}_{tier}"] for tier in ("high", "medium", "low"))
        assert high < medium < low, sizes
        assert corpus_size(f"{domain}_low", MEGABYTES) <= low < corpus_size(f"{domain}_low", MEGABYTES) + 10_000
    found = cross_corpus_overlaps(corpora)
    assert found.checked == sum(map(len, corpora.values())) and found.found == []
    statements = [s for name in ("math_high", "math_medium", "math_low") for doc in corpora[name]
                  for s in re.findall(r"^Problem: (.*)$", doc, flags=re.M)]
    assert len(statements) > 1000 and len(set(statements)) == len(statements)  # every problem once


def test_code_tiers_differ_in_quality():
    corpora = builtin_corpora(MEGABYTES)
    high, medium, low = (corpora[f"code_{tier}"] for tier in ("high", "medium", "low"))
    assert sum('"""' in d for d in high) > len(high) // 3 and sum("# " in d for d in high) > len(high) // 3
    assert not any(re.search(r"^\s*(\"\"\"|'''|#)", d, flags=re.M) for d in medium)  # no docstrings, no comments
    noise = {tier: _noise_share(docs) for tier, docs in (("high", high), ("medium", medium), ("low", low))}
    assert noise["high"] < 0.002 and noise["medium"] < 0.002 and noise["low"] > 0.01, noise
    assert sum(map(_parses, medium)) > sum(map(_parses, low)) == 0  # shuffled lines and noise: damaged
    docstrings = [d for d in corpora["prose"] if "def " not in d]
    assert docstrings and not any(d[:200] in "".join(high) for d in docstrings)


def _arithmetic_answers(documents) -> list[bool]:
    """Whether each "(a +/- b) * c ... Answer: n" problem of answers-only documents is answered right."""
    found = []
    for doc in documents:
        for a, op, b, c, answer in re.findall(r"\((\d+) ([+-]) (\d+)\) \* (\d+)\.\nAnswer: (-?\d+)\.", doc):
            found.append((int(a) + int(b) if op == "+" else int(a) - int(b)) * int(c) == int(answer))
    return found


def test_math_tiers_differ_in_quality():
    corpora = builtin_corpora(MEGABYTES)
    assert all("Solution:" in d for d in corpora["math_high"])
    assert not any("Solution:" in d for d in corpora["math_medium"] + corpora["math_low"])
    medium, low = _arithmetic_answers(corpora["math_medium"]), _arithmetic_answers(corpora["math_low"])
    assert len(medium) > 50 and all(medium)
    assert len(low) > 50 and 0.3 < 1 - sum(low) / len(low) < 0.7  # about half wrong


def test_corpora_are_deterministic_and_the_old_names_are_the_high_tiers():
    first = builtin_corpora(0.05)
    builtin_corpora.cache_clear()
    assert builtin_corpora(0.05) == first
    assert builtin_documents("code", 0.05) == first["code_high"] and builtin_documents("math", 0.05) == first["math_high"]
