"""Contamination by content (data/contamination.py, eval/contamination.py) on the really prepared demo experiment: no document
in two corpora, no held-out evaluation text in any dataset's training split; and the check finds copies."""
from __future__ import annotations

import json

from megatron_demix.data.contamination import WINDOW_WORDS, cross_corpus_overlaps, held_out_overlaps, window_hashes
from megatron_demix.eval.contamination import check_experiment


def test_windows_ignore_case_and_whitespace_and_find_a_copied_passage():
    words = [f"word{i}" for i in range(40)]
    source = " ".join(words)
    copy = "Preface.\n" + "  ".join(w.upper() for w in words[10:10 + WINDOW_WORDS]) + "\n\tthe end"
    assert set(window_hashes(copy).tolist()) & set(window_hashes(source).tolist())
    shorter = " ".join(words[10:10 + WINDOW_WORDS - 1])  # one word short of a window: not a copy
    assert not set(window_hashes(shorter + " other").tolist()) & set(window_hashes(source).tolist())

    found = cross_corpus_overlaps({"a": [source, "unrelated text " * 20], "b": ["x " * 30, copy]})
    assert found.checked == 4 and sorted(found.found) == [("a", 0, "b"), ("b", 1, "a")]
    held_out = held_out_overlaps({"code": [copy, "fresh words " * 10]}, {"a": [source], "b": ["x " * 30]})
    assert held_out.summary() == {"checked": 2, "overlaps": 1, "by_pair": {"code in a": 1}}


def test_prepared_demo_has_no_document_in_two_corpora_and_no_held_out_text_in_training(prepared_demo):
    report = check_experiment(prepared_demo)
    print("contamination:", json.dumps(report))
    documents = report["documents"]
    assert set(documents) == {d.name for d in prepared_demo.datasets} and len(documents) == 7
    assert report["cross_corpus"]["checked"] == sum(documents.values()) > 2000
    assert report["cross_corpus"]["overlaps"] == 0, report["cross_corpus"]["by_pair"]
    # Every domain's items and documents are checked (the demo: 3 domains, choice items and bpb documents).
    assert report["held_out_in_training"]["checked"] >= 3 * 5
    assert report["held_out_in_training"]["overlaps"] == 0, report["held_out_in_training"]["by_pair"]


def test_domains_group_the_tiers_and_are_scored_on_their_first_dataset(prepared_demo):
    from megatron_demix.data.tokenizer import load_tokenizer
    from megatron_demix.data.builtin_tasks import default_tasks, domain_sources, held_out_documents, task_files

    tasks, metrics = default_tasks(prepared_demo)
    assert tasks == {d: [f"demix_{d}_choice", f"demix_{d}_bpb"] for d in ("general", "code", "math")}
    assert metrics["demix_code_bpb"] == "bits_per_byte"
    assert domain_sources(prepared_demo) == {"general": "general", "code": "code_high", "math": "math_high"}
    tokenizer = load_tokenizer(prepared_demo.paths.tokenizer)
    for domain, source in domain_sources(prepared_demo).items():
        held_out = [" ".join(doc.split()) for doc in held_out_documents(prepared_demo, source, tokenizer)]
        for line in task_files(prepared_demo)[domain]["choice"].read_text().splitlines():
            item = json.loads(line)
            assert any(f"{item['context']} {item['choices'][item['label']]}" in doc for doc in held_out)
