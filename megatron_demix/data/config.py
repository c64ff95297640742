"""Config sections for the candidate datasets, the tokenizer and data preparation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_demix.config.base import fail, require_at_least

BUILTIN_CORPORA = ("prose", "code_high", "code_medium", "code_low", "math_high", "math_medium", "math_low", "code", "math")
"""Corpora made on any machine from what Python and Debian ship (see data/builtin.py; `code` and `math`
are `code_high` and `math_high`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DatasetConfig:
    """One dataset of the experiment: the general data or one candidate."""

    name: str
    """Short identifier; names the component model and the output files (letters, digits, _ and -)."""
    role: Literal["general", "candidate"] = "candidate"
    """`general` data is blended into every component (beta) and trains the base; one component per candidate."""
    builtin: Literal[BUILTIN_CORPORA] | None = None
    """A built-in corpus (no downloads): general prose, code and math at three quality tiers; give either this or `path`."""
    path: str | None = None
    """A JSONL file (plain, .gz or .zst), a Parquet file, a plain text file, a `datasets` save_to_disk folder, a
    directory or glob pattern (`shards/*.parquet`) of these, or a Megatron indexed dataset prefix (.bin/.idx)."""
    format: Literal["auto", "jsonl", "text", "indexed"] = "auto"
    """How to read `path`; `auto` decides by suffix, file by file (.jsonl/.json[.gz|.zst], .parquet, .arrow, .txt,
    .bin/.idx prefix)."""
    text_field: str = "text"
    """The JSONL field, or Parquet / Arrow column, holding the document text."""
    domain: str | None = None
    """The evaluation domain the dataset belongs to (e.g. `code` for every code tier); unset: its own name.
    A domain's built-in tasks are made from the held-out documents of its first dataset listed: list its
    cleanest dataset first."""

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            fail("name", f"{self.name!r} must be non-empty and use only letters, digits, '_' and '-'")
        if (self.builtin is None) == (self.path is None):
            fail(self.name, f"give exactly one of 'builtin' (one of {', '.join(BUILTIN_CORPORA)}) or 'path'")
        if self.domain is not None and (not self.domain or not all(c.isalnum() or c in "_-" for c in self.domain)):
            fail(f"{self.name}.domain", f"{self.domain!r} must be non-empty and use only letters, digits, '_' and '-'")

    @property
    def eval_domain(self) -> str:
        """The evaluation domain: `domain`, else the dataset's name."""
        return self.domain or self.name


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenizerConfig:
    """The tokenizer: a user's Hugging Face `tokenizer.json`, or a byte-level BPE trained on the data."""

    path: str | None = None
    """A `tokenizer.json` file (with `model.from_hf`: that directory's); when unset, a byte-level BPE is trained on
    the datasets and saved in the work dir."""
    vocab_size: int = 6144
    """Vocabulary size of the trained BPE (ignored with `path`)."""
    train_megabytes: float = 8.0
    """Text read from each dataset to train the BPE (ignored with `path`)."""

    def __post_init__(self):
        if self.train_megabytes <= 0:
            fail("train_megabytes", f"{self.train_megabytes} must be > 0")
        if self.vocab_size < 260:
            fail("vocab_size", f"{self.vocab_size} is too small for a byte-level BPE (256 bytes + specials); use >= 260")


@dataclass(frozen=True, kw_only=True, slots=True)
class PrepareConfig:
    """How `demix prepare` tokenizes the datasets into Megatron indexed datasets."""

    workers: int = 2
    """Tokenizer worker processes (like Megatron's preprocess_data.py --workers)."""
    builtin_megabytes: float = 1.0
    """Size of the built-in corpora in MB of text: `prose` and the medium tiers have this size, the high tiers
    half of it, the low tiers one and a half times (past about 1 MB, prose and code run out of source text)."""
    append_eod: bool = True
    """Append the end-of-document token after every document (Megatron's --append-eod)."""
    chunk_documents: int = 256
    """Documents per work item sent to a worker."""

    def __post_init__(self):
        require_at_least(self, 1, "workers", "chunk_documents")
        if self.builtin_megabytes <= 0:
            fail("builtin_megabytes", f"{self.builtin_megabytes} must be > 0")
