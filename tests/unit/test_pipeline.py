"""The pipeline's commits: in read order, grouped when committing is the slow part, and
never past a failed batch."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from loader.batching import Batch
from loader.pipeline import Pipeline


def batches(count: int) -> list[tuple[Batch, str]]:
    return [(Batch(seq=i, first_row=i, rows=[b"{}"], body=b"[{}]"), f"s{i}")
            for i in range(1, count + 1)]  # fmt: skip


def test_batches_finished_while_a_commit_runs_go_into_the_next_commit() -> None:
    """A slow commit (a remote state store) is paid per group: the batches delivered
    meanwhile are committed together, in read order, up to the window."""
    groups: list[list[int]] = []

    def commit(group: list[tuple[Batch, Any]]) -> None:
        groups.append([batch.seq for batch, _ in group])
        time.sleep(0.02)

    pipeline = Pipeline(4, lambda *args: [], commit, threading.Event(), threading.Event())
    assert pipeline.run(iter(batches(40))) is False
    assert [seq for group in groups for seq in group] == list(range(1, 41))
    assert max(len(group) for group in groups) > 1 and len(groups) < 30
    assert max(len(group) for group in groups) <= 4


def test_a_failed_batch_stops_the_commits_after_it_not_before() -> None:
    """Batches delivered before a failure are committed; none after it."""
    committed: list[int] = []
    failed = threading.Event()

    def send(rows: list[bytes], body: bytes, scope: str, *rest: Any) -> list[Any]:
        if scope == "s6":
            time.sleep(0.05)  # the batches before it are delivered by then
            failed.set()
            raise RuntimeError("refused")
        if scope > "s6" and len(scope) == 2:
            failed.wait(1)
        return []

    def commit(group: list[tuple[Batch, Any]]) -> None:
        committed.extend(batch.seq for batch, _ in group)

    pipeline = Pipeline(4, send, commit, threading.Event(), threading.Event())
    with pytest.raises(RuntimeError, match="refused"):
        pipeline.run(iter(batches(12)))
    assert committed == [1, 2, 3, 4, 5]
