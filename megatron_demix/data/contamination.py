"""Contamination by content: which documents share a normalised text window with another corpus.

    demix contamination --config configs/demo.yaml    # after `demix prepare` (eval/contamination.py)

A text is normalised (lowercased, whitespace collapsed), cut into every window of WINDOW_WORDS
consecutive words, and each window hashed to 64 bits; two texts overlap when they share a window
(a text shorter than a window is one window). This is the n-gram test of language-model
contamination studies; it finds copies whatever the file or path they came from.

On a prepared experiment (eval/contamination.py: `check_experiment`) it checks, from the tokenized datasets themselves:
(a) no document of one dataset shares a window with another dataset;
(b) no held-out evaluation text (the built-in tasks' items and documents) shares a window with
    any dataset's training split (the documents the trainer draws from, its own dataset's included).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

WINDOW_WORDS = 13
"""Words per window: 13, as in the GPT-3 paper's contamination study (long enough that common
phrases and code idioms do not count as copies)."""
_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-64 prime: mixes the words' hashes into the window's


@lru_cache(maxsize=1 << 20)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def window_hashes(text: str, words: int = WINDOW_WORDS) -> np.ndarray:
    """The 64-bit hashes of every `words`-word window of the normalised `text` (deterministic)."""
    tokens = text.lower().split()
    if not tokens:
        return np.zeros(0, dtype=np.uint64)
    ids = np.fromiter((_word_hash(t) for t in tokens), dtype=np.uint64, count=len(tokens))
    count = max(len(tokens) - words + 1, 1)
    windows = np.zeros(count, dtype=np.uint64)
    for offset in range(min(words, len(tokens))):
        windows = windows * _MULTIPLIER + ids[offset:offset + count]  # uint64 arithmetic wraps, as a hash should
    return windows


class WindowIndex:
    """The windows of the texts added so far, to ask whether a new text shares one."""

    def __init__(self, words: int = WINDOW_WORDS):
        self.words = words
        self.hashes: set[int] = set()

    def add(self, text: str) -> None:
        self.hashes.update(window_hashes(text, self.words).tolist())

    def shares(self, text: str) -> bool:
        return not self.hashes.isdisjoint(window_hashes(text, self.words).tolist())

    def add_if_new(self, text: str) -> bool:
        """Add `text` unless it shares a window with a text added before; returns whether it was added."""
        hashes = window_hashes(text, self.words).tolist()
        if not self.hashes.isdisjoint(hashes):
            return False
        self.hashes.update(hashes)
        return True


@dataclass
class Overlaps:
    """What a check found: the texts checked and those sharing a window, as (source, number, other source)."""

    checked: int = 0
    found: list[tuple[str, int, str]] = field(default_factory=list)

    def summary(self) -> dict:
        pairs = Counter(f"{source} in {other}" for source, _, other in self.found)
        return {"checked": self.checked, "overlaps": len(self.found), "by_pair": dict(pairs)}


def _indexes(corpora: dict[str, list[str]], words: int) -> dict[str, WindowIndex]:
    indexes = {name: WindowIndex(words) for name in corpora}
    for name, docs in corpora.items():
        for doc in docs:
            indexes[name].add(doc)
    return indexes


def cross_corpus_overlaps(corpora: dict[str, Iterable[str]], words: int = WINDOW_WORDS) -> Overlaps:
    """(a): every document of every corpus against every other corpus."""
    corpora = {name: list(docs) for name, docs in corpora.items()}
    indexes = _indexes(corpora, words)
    result = Overlaps()
    for name, docs in corpora.items():
        for number, doc in enumerate(docs):
            result.checked += 1
            hashes = window_hashes(doc, words).tolist()
            for other, index in indexes.items():
                if other != name and not index.hashes.isdisjoint(hashes):
                    result.found.append((name, number, other))
    return result


def held_out_overlaps(held_out: dict[str, Iterable[str]], training: dict[str, Iterable[str]],
                      words: int = WINDOW_WORDS) -> Overlaps:
    """(b): every held-out text (per domain) against every dataset's training documents."""
    indexes = _indexes({name: list(docs) for name, docs in training.items()}, words)
    result = Overlaps()
    for domain, texts in held_out.items():
        for number, text in enumerate(texts):
            result.checked += 1
            result.found.extend((domain, number, name) for name, index in indexes.items() if index.shares(text))
    return result
