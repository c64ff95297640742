"""Tokenizers: a user's Hugging Face `tokenizer.json`, or a byte-level BPE trained on the data.

`load_tokenizer(path)` returns a `DemixTokenizer`, which is what megatron-core's GPTDataset needs
(`eod`, `vocab_size`) plus `tokenize` / `detokenize` for evaluation.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from megatron_demix.runtime.files import atomic_write_text

EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")
"""End-of-document tokens looked for, in order, in a user's tokenizer."""
TRAINED_SPECIALS = ("<|endoftext|>",)


class TokenizerError(ValueError):
    pass


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

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def detokenize(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        """Hash of the tokenizer file: prepared data records it, so a new tokenizer re-prepares."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


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
