"""Many proxies from one read (`--mixtures`, issue 29): under real `mpiexec -n 2`, every batch-written proxy holds
the bytes of the single merge of its mixture, the components are read once for the batch, a re-run keeps what a
killed run published and finishes the rest, and bad mixture lists fail with the file and entry named."""
from __future__ import annotations

import json
import pickle
import shutil

import pytest

from merge_helpers import PYTHON, REPO, RUN, small_env

pytestmark = pytest.mark.mpi

# Inputs A, B (TP=2, PP=2) and C (TP=1: other chunk boundaries, so regions are assembled from several stored chunks).
MIXTURES = [{"id": "p0", "weights": [1, 3, 0]}, {"id": "p1", "weights": [0.2, 0.3, 0.5]}, {"id": "p2", "weights": [0, 0, 1]}]


def _summary(path):
    return json.loads(path.read_text())


def _data_and_index(save_root):
    """(every rank's data file as bytes, .metadata's chunk records and tensor metadata) of a merged save root."""
    (iteration,) = save_root.glob("iter_*")
    metadata = pickle.loads((iteration / ".metadata").read_bytes())
    files = {f.name: f.read_bytes() for f in sorted(iteration.glob("__*_0.distcp"))}
    return files, metadata.storage_data, metadata.state_dict_metadata


@pytest.fixture(scope="module")
def batch(checkpoints, mpiexec, tmp_path_factory):
    """The three mixtures merged in one batch, and each on its own, under mpiexec -n 2 with bf16 output."""
    root = tmp_path_factory.mktemp("batch")
    inputs = [str(checkpoints[name]) for name in ("A", "B", "C")]
    listing = root / "mixtures.jsonl"
    listing.write_text("".join(json.dumps(m) + "\n" for m in MIXTURES))
    args = [PYTHON, RUN[1], "--inputs", *inputs, "--mixtures", listing, "--output", root / "proxies", "--dtype", "bf16",
            "--json-summary", root / "batch.json"]
    proc = mpiexec(2, args, env=small_env(), cwd=REPO)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    singles = {}
    for mixture in MIXTURES:
        output = root / "single" / mixture["id"]
        single = mpiexec(2, [PYTHON, RUN[1], "--inputs", *[f"{p}:{w}" for p, w in zip(inputs, mixture["weights"])],
                             "--output", output, "--dtype", "bf16", "--json-summary", root / f"{mixture['id']}.json"],
                         env=small_env(), cwd=REPO)
        assert single.returncode == 0, f"{single.stdout[-3000:]}\n{single.stderr[-3000:]}"
        singles[mixture["id"]] = output
    return root, proc, singles, args


def test_each_proxy_is_byte_identical_to_its_single_merge(batch):
    root, _, singles, _ = batch
    outputs = {}
    for mixture in MIXTURES:
        files, records, tensors = _data_and_index(root / "proxies" / mixture["id"])
        expected_files, expected_records, expected_tensors = _data_and_index(singles[mixture["id"]])
        assert sorted(files) == ["__0_0.distcp", "__1_0.distcp"]
        assert files == expected_files, f"{mixture['id']}: data files differ from the single merge"
        assert records == expected_records and tensors == expected_tensors
        provenance = json.loads(next((root / "proxies" / mixture["id"]).glob("iter_*/merge.json")).read_text())
        assert provenance["mixture_id"] == mixture["id"] and provenance["dtype"] == "bf16"
        assert provenance["weights"] == pytest.approx([w / sum(mixture["weights"]) for w in mixture["weights"]])
        outputs[mixture["id"]] = files
    assert outputs["p0"] != outputs["p1"] != outputs["p2"]  # three different proxies, not one written thrice
    assert not list((root / "proxies").glob(".*")), "temporary directory left behind"


def test_the_components_are_read_once_for_the_batch(batch):
    root, proc, _, _ = batch
    batch_summary, single = _summary(root / "batch.json"), _summary(root / "p1.json")
    assert batch_summary["bytes_read"] == single["bytes_read"] > 0
    assert batch_summary["bytes_written"] == sum(_summary(root / f"{m['id']}.json")["bytes_written"] for m in MIXTURES)
    assert batch_summary["outputs"] == [str(root / "proxies" / m["id"]) for m in MIXTURES]
    assert "3 proxies from one read" in proc.stdout and "MB/s" in proc.stdout and "ETA" in proc.stdout


def test_a_rerun_keeps_the_published_proxies_and_finishes_the_rest(batch, mpiexec, tmp_path):
    root, _, _, args = batch
    proxies = tmp_path / "proxies"
    shutil.copytree(root / "proxies", proxies)
    # A killed run: p2 not yet published, its temporary directory left behind.
    shutil.rmtree(proxies / "p2")
    (proxies / ".p2.99999.tmp-demix").mkdir()  # temporary_name: .<name>.<pid>.tmp-demix
    kept = {p: next((proxies / p).glob("iter_*/__0_0.distcp")).stat().st_mtime_ns for p in ("p0", "p1")}
    rerun = [str(tmp_path / "proxies") if a == root / "proxies" else a for a in args]
    rerun[rerun.index("--json-summary") + 1] = tmp_path / "rerun.json"
    proc = mpiexec(2, rerun, env=small_env(), cwd=REPO)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "2 of 3 output(s) already merged, kept" in proc.stdout
    assert {p: next((proxies / p).glob("iter_*/__0_0.distcp")).stat().st_mtime_ns for p in ("p0", "p1")} == kept
    assert _data_and_index(proxies / "p2")[0] == _data_and_index(root / "proxies" / "p2")[0]
    assert _summary(tmp_path / "rerun.json")["skipped"] == [str(proxies / "p0"), str(proxies / "p1")]
    assert sorted(p.name for p in proxies.iterdir()) == ["p0", "p1", "p2"]

    # Other weights for an id whose proxy exists: refused, nothing replaced.
    listing = tmp_path / "changed.jsonl"
    listing.write_text(json.dumps({"id": "p0", "weights": [1, 1, 1]}) + "\n")
    changed = rerun.copy()
    changed[changed.index("--mixtures") + 1] = listing
    proc = mpiexec(2, changed, env=small_env(), cwd=REPO)
    assert proc.returncode == 2
    assert f"--output {proxies / 'p0'} already exists and is not this mixture's merge; remove it or pass --overwrite" in proc.stderr
    assert next((proxies / "p0").glob("iter_*/__0_0.distcp")).stat().st_mtime_ns == kept["p0"]


@pytest.mark.parametrize("content, flags, message", [
    ('{"id": "p0", "weights": [1, 1, 1]}\n{"id": "p0", "weights": [1, 0, 0]}\n', [], "entry 2: id 'p0' appears twice"),
    ('[{"id": "../up", "weights": [1, 1, 1]}]', [], "entry 1: expected {\"id\": NAME"),
    ('{"id": "p0", "weights": {"A": 1}}\n', [], "mixture p0: give its weights as {candidate: weight} with --config"),
    ('{"id": "p0", "weights": [1, 1]}\n', [], "mixture p0: got 2 weight(s) for 3 input(s)"),
    ('{"id": "p0", "weights": [1, 0, 0]}\n{"id": "p1", "weights": [0, 0, 0]}\n', [], "mixture p1: all weights are 0"),
    ("not json", [], "not a JSON list nor JSON lines"),
])
def test_a_bad_mixture_list_names_the_file_and_entry(checkpoints, tmp_path, capsys, content, flags, message):
    from megatron_demix.commands.merge import main

    listing = tmp_path / "mixtures.jsonl"
    listing.write_text(content)
    inputs = [str(checkpoints[name]) for name in ("A", "B", "C")]
    assert main(["--inputs", *inputs, "--mixtures", str(listing), "--output", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_weighted_inputs_with_mixtures_are_refused(checkpoints, tmp_path, capsys):
    from megatron_demix.commands.merge import main

    with pytest.raises(SystemExit) as exit_:
        main(["--inputs", f"{checkpoints['A']}:1", "--mixtures", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "with --mixtures give the checkpoints alone (DIR)" in capsys.readouterr().err
