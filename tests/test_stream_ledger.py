"""StreamLedger: the source is acknowledged only up to what Elasticsearch acknowledged, in any order."""

from __future__ import annotations

import time

from transforms.stream_ledger import StreamLedger, ledger, new_ledger


def test_ledger_when_later_positions_written_first_then_confirmable_waits_for_the_oldest():
    book = StreamLedger()
    for position in (100, 100, 120, 130):
        book.emitted(position)

    book.done({120: 1, 130: 1})
    assert book.confirmable() == 0 and book.pending() == 2
    book.done({100: 1})
    assert book.confirmable() == 0  # one change of position 100 is still unwritten
    book.done({100: 1})
    assert book.confirmable() == 130 and book.pending() == 0


def test_ledger_when_written_before_recorded_then_counted_once_recorded():
    book = StreamLedger()
    book.emitted(10)
    book.done({10: 1, 20: 1})  # the writer answered before the reader recorded 20
    assert book.confirmable() == 10
    book.emitted(20)
    assert book.confirmable() == 20 and book.pending() == 0


def test_ledger_when_a_change_stays_unwritten_after_later_ones_then_it_is_lost():
    book = StreamLedger()
    book.emitted(1)
    book.emitted(2)
    book.writing(+1)
    assert not book.lost(0.0)  # a write under way: maybe just slow
    book.done({2: 1}, committed_at=[time.time() - 0.5], conflicts=1)
    assert book.lost(0.0) and not book.lost(60.0)
    state = book.state()
    assert state["pending_changes"] == 1 and state["version_conflicts"] == 1 and state["lag_seconds"] >= 0.5


def test_ledger_when_stream_opened_again_then_a_new_generation_keeps_the_conflict_count_and_lag():
    first = ledger("job-ledger-test")
    first.emitted(1)
    first.done({1: 1}, conflicts=3, committed_at=[time.time() - 0.5])
    second = new_ledger("job-ledger-test")
    assert second.generation == first.generation + 1 and second.version_conflicts == 3
    assert second.state()["lag_seconds"] >= 0.5  # a reopened stream still reports the lag it measured
    assert ledger("job-ledger-test") is second


def test_ledger_when_the_tail_stays_unwritten_and_no_write_is_under_way_then_it_is_lost():
    book = StreamLedger()
    book.emitted(5)  # the last change of a stream gone idle: nothing later will pass it
    assert not book.lost(60.0)
    book.writing(+1)
    assert not book.lost(0.0)  # a writer retrying through an outage is not stuck
    book.writing(-1)
    assert book.lost(0.0) and not book.lost(60.0)  # its write ended, the change was not in it
    book.done({5: 1})
    assert not book.lost(0.0) and book.confirmable() == 5


def test_ledger_when_changes_stay_unwritten_and_nothing_is_written_then_stalled():
    book = StreamLedger()
    assert not book.stalled(0.0)  # nothing outstanding
    book.emitted(5, count=3)
    assert book.stalled(0.0) and not book.stalled(60.0)  # a dropped end of a snapshot, the source idle after
    book.done({5: 2})
    assert not book.stalled(60.0) and book.stalled(0.0)  # the writer is making progress: not yet
    book.done({5: 1})
    assert not book.stalled(0.0) and book.confirmable() == 5


def test_ledger_when_a_held_snapshot_is_written_a_chunk_at_a_time_then_confirmable_only_after_its_sweep():
    book = StreamLedger()
    book.hold(50)  # a snapshot being read: every document at position 50
    book.emitted(50, count=2000)
    book.done({50: 2000})  # the first chunk written before the next one is read
    assert book.confirmable() == 0 and book.pending() == 0 and not book.lost(0.0)
    book.emitted(50, count=500)  # the last chunk
    book.emitted(50)  # the sweep
    book.release()
    book.emitted(60)  # a change streamed after the snapshot
    book.done({60: 1, 50: 500})
    assert book.confirmable() == 0  # the sweep is not written yet
    book.done({50: 1})
    assert book.confirmable() == 60 and book.pending() == 0


def test_ledger_lag_when_a_change_waits_then_grows_and_when_idle_after_a_spike_then_zero(monkeypatch):
    import transforms.stream_ledger as module

    book = StreamLedger()
    book.emitted(1)
    book.done({1: 1}, committed_at=[time.time() - 8.0])  # one slow batch: 8 s behind
    assert book.state()["lag_seconds"] >= 8.0  # just acknowledged: that is the lag now
    monkeypatch.setattr(module, "IDLE_AFTER", 0.0)
    time.sleep(0.01)
    state = book.state()
    # Nothing outstanding since: caught up, not still 8 s behind; the last batch's lag stays readable.
    assert state["lag_seconds"] == 0.0 and state["last_batch_lag_seconds"] >= 8.0

    book.emitted(2)  # read, never acknowledged (a write stuck in an outage)
    book._emitted_at[2] -= 30.0  # as if read 30 s ago
    assert book.current_lag() >= 30.0  # grows with the wait, not the last good batch's 8 s
