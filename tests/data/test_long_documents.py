"""A long document is tokenized in pieces (bounded memory) with the ids of the whole; tokenizers for which cutting
could change ids (a normalizer, a prefix space) tokenize it whole."""
from __future__ import annotations

import json
import random

import pytest

from megatron_demix.data import tokenizer as tokenizer_module
from megatron_demix.data.tokenizer import load_tokenizer, piece_end, train_bpe


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(["cat", "dog", "é", "日本", "x1", "a.b", "it's"]) for _ in range(200)) for _ in range(50)]
    return train_bpe(texts, 400, tmp_path_factory.mktemp("bpe") / "tokenizer.json")


def test_pieces_give_the_ids_of_the_whole(bpe, monkeypatch):
    assert bpe.cuts_exactly
    rng = random.Random(1)
    alphabet = "abcé d\n\n.,!?  \t'sxy0129日本"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 2000))) for _ in range(150)]
    whole = [bpe._tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    for size in (2, 7, 50, 300):
        monkeypatch.setattr(tokenizer_module, "PIECE_CHARS", size)
        assert bpe.tokenize_batch(texts) == whole, size


def test_piece_ends_between_a_letter_and_whitespace():
    text = "ab cd\nef 12 34" + " 5" * 100
    assert piece_end(text, 0, 7) == 5 and text[4:6] == "d\n"  # the last cut within 7 characters
    assert piece_end(text, 0, 1000) == len(text)
    assert piece_end("1 " * 50 + "end", 0, 10) == len("1 " * 50 + "end")  # no cut anywhere: one piece


def test_tokenizers_that_a_cut_could_change_encode_whole(bpe, tmp_path):
    spec = json.loads(bpe.path.read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    (tmp_path / "prefix.json").write_text(json.dumps(spec))
    assert not load_tokenizer(tmp_path / "prefix.json").cuts_exactly
    spec["pre_tokenizer"]["add_prefix_space"], spec["normalizer"] = False, {"type": "NFC"}
    (tmp_path / "normalized.json").write_text(json.dumps(spec))
    assert not load_tokenizer(tmp_path / "normalized.json").cuts_exactly
