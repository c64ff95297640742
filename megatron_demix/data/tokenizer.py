"""Tokenizers: a user's Hugging Face `tokenizer.json`, or a byte-level BPE trained on the data.

`load_tokenizer(path)` returns a `DemixTokenizer`, which is what megatron-core's GPTDataset needs
(`eod`, `vocab_size`) plus `tokenize` / `detokenize` for evaluation.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from megatron_demix.runtime.errors import BAD_INPUT
from megatron_demix.runtime.files import atomic_write_text

PIECE_CHARS = 1 << 18
"""Documents longer than this are tokenised in pieces of at most about this many characters: the tokenizers
library holds ~200 bytes per character of a document while encoding it (one 40 MB document: 8.5 GB)."""
EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")
"""End-of-document tokens looked for, in order, in a user's tokenizer."""
TRAINED_SPECIALS = ("<|endoftext|>",)


class TokenizerError(ValueError):
    exit_status = BAD_INPUT


class DemixTokenizer:
    """A `tokenizers.Tokenizer` with the attributes megatron-core's datasets and lm-eval use."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self._tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as error:  # the Rust side raises plain Exceptions with a message
            raise TokenizerError(
                f"{self.path}: cannot read the tokenizer ({error}); give a Hugging Face tokenizer.json in"
                " tokenizer.path, or leave it unset to train one on the data"
            ) from None
        self.eod = next((i for t in EOD_CANDIDATES if (i := self._tokenizer.token_to_id(t)) is not None), None)
        if self.eod is None:
            raise TokenizerError(f"{self.path}: no end-of-document token (looked for {', '.join(EOD_CANDIDATES)})")
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        # megatron-core hashes its dataset configs, tokenizer included, through this attribute.
        self.unique_identifiers = {"class": type(self).__name__, "fingerprint": self.fingerprint()}
        self.cuts_exactly = _cuts_exactly(json.loads(self._tokenizer.to_str()))

    def tokenize(self, text: str) -> list[int]:
        return self.tokenize_batch([text])[0]

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text; a long one (PIECE_CHARS) piece by piece, where that gives the same ids (cuts_exactly)."""
        long = {i for i, text in enumerate(texts) if len(text) > PIECE_CHARS} if self.cuts_exactly else set()
        short = iter(self._tokenizer.encode_batch([t for i, t in enumerate(texts) if i not in long], add_special_tokens=False))
        return [self._tokenize_in_pieces(text) if i in long else next(short).ids for i, text in enumerate(texts)]

    def _tokenize_in_pieces(self, text: str) -> list[int]:
        ids, start = [], 0
        while start < len(text):
            end = piece_end(text, start, PIECE_CHARS)
            ids += self._tokenizer.encode(text[start:end], add_special_tokens=False).ids
            start = end
        return ids

    def detokenize(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        """Hash of the tokenizer file: prepared data records it, so a new tokenizer re-prepares."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def _cuts_exactly(spec: dict) -> bool:
    """Whether cutting a text between a letter and a space or newline leaves its ids unchanged: true for byte-level
    BPE with no normalizer (the trained one, GPT-2, Llama 3, Qwen): no pre-token joins a letter to the whitespace
    after it (GPT-2's regex; Llama 3's and Qwen's `Split`), and pre-tokens are encoded one by one. Not so where a
    prefix space or `▁` is added at the start of the text (SentencePiece-style tokenizers): those encode whole."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    return (spec.get("normalizer") is None and (spec.get("model") or {}).get("type") == "BPE"
            and kinds in (["ByteLevel"], ["Split", "ByteLevel"])
            and not any(step.get("add_prefix_space") for step in steps)
            and (kinds == ["Split", "ByteLevel"] or steps[0].get("use_regex", True)))


def piece_end(text: str, start: int, size: int) -> int:
    """Where the piece of `text` from `start` ends: len(text) if the rest fits in `size` characters, else the
    last cut between a letter and a space or newline within `size` characters (the first one after, where
    there is none; the end of the text where there is none at all)."""
    if len(text) - start <= size:
        return len(text)
    high = start + size + 1  # regex end position: a cut at start + size at most
    while high > start + 1:  # backwards in windows of 4096 characters: the last cut is usually in the first
        low = max(start, high - 4096)
        cuts = list(_CUT.finditer(text, low, high))
        if cuts:
            return cuts[-1].start() + 1
        high = low + 1
    found = _CUT.search(text, start + size)
    return found.start() + 1 if found else len(text)


_CUT = re.compile(r"[^\W\d_][ \n]")
"""A letter followed by a space or newline: the text may be cut between the two."""


def load_tokenizer(path: str | Path) -> DemixTokenizer:
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: no tokenizer file; run `demix prepare --config <experiment.yaml>` first, or set tokenizer.path")
    return DemixTokenizer(path)


def train_bpe(texts: Iterable[str], vocab_size: int, output: Path) -> DemixTokenizer:
    """Train a byte-level BPE (GPT-2 style, `<|endoftext|>` as end of document) and save it atomically."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TRAINED_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    atomic_write_text(Path(output), tokenizer.to_str())
    return DemixTokenizer(output)
