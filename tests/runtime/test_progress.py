"""The one progress line (runtime/progress.py) of a search round, a job and a merge's share."""
from megatron_demix.runtime.progress import Progress


def test_a_line_when_due_on_change_or_at_the_end():
    lines = []
    rounds = Progress("round-0", total=8, unit="mixtures", every=60, on_change=True, done_before=2, log=lines.append)
    rounds.update(2, "0 failed, 6 pending")
    rounds.update(2, "0 failed, 6 pending")  # unchanged within the minute: no line
    rounds.update(4, "1 failed, 3 pending")
    assert len(lines) == 2 and lines[0] == "round-0: 2/8 mixtures, 0 failed, 6 pending, 00:00:00"
    assert lines[1].startswith("round-0: 4/8 mixtures, 1 failed, 3 pending, ")
    assert "mixtures/" in lines[1] and "ETA" in lines[1]  # 2 new since the start: a rate, and what is left

    lines.clear()
    share = Progress("[merge] rank 0's share", total=4 << 20, unit="MB", scale=1 << 20, every=60, log=lines.append)
    share.add(1 << 20)  # not due yet
    share.add(3 << 20)  # the end: always a line
    assert len(lines) == 1 and lines[0].startswith("[merge] rank 0's share: 4.0/4.0 MB, ") and "MB/s" in lines[0]


def test_detail_is_computed_only_when_a_line_is_due():
    lines, asked = [], []
    job = Progress("train (12)", every=3600, log=lines.append)
    job.update(detail=lambda: asked.append(1) or "2 running")
    assert lines == [] and asked == []
    job.due = 0  # as if the hour had passed
    job.update(detail=lambda: asked.append(1) or "2 running | iter 3/10")
    assert asked == [1] and lines == ["train (12): 2 running | iter 3/10, 00:00:00"]
