import numpy as np
import pytest

import fidelity as F
from fidelity.journal import Journal, JournalError


def _batch(rng, n, d=5, k=2):
    x = rng.normal(size=(n, d))
    return x, np.column_stack([x.sum(1), x[:, 0]])[:, :k]


def test_records_survive_reopening_and_replay_in_order(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "sub" / "q.journal"
    j = Journal(path, input_dim=5, chunk_rows=7)
    batches = [_batch(rng, n) for n in (7, 3, 7)]
    for x, y in batches:
        j.append(x, y)
    again = Journal(path, input_dim=5, chunk_rows=99)
    assert len(again) == 3 and again.rows == 17 and again.chunk_rows == 7  # the file's size wins
    assert again.dropped_bytes == 0
    for x, y in batches:
        np.testing.assert_array_equal(again.replay(x), y)
    assert not again.replaying and again.replay(batches[0][0]) is None
    for (x, y), (xr, yr) in zip(batches, Journal(path, input_dim=5).records()):
        np.testing.assert_array_equal(x, xr)
        np.testing.assert_array_equal(y, yr)


@pytest.mark.parametrize("damage", ["torn", "garbage", "flipped"])
def test_a_damaged_tail_is_dropped_and_truncated(tmp_path, damage):
    rng = np.random.default_rng(1)
    path = tmp_path / "q.journal"
    j = Journal(path, input_dim=5)
    for n in (4, 4, 4):
        j.append(*_batch(rng, n))
    size = path.stat().st_size
    intact = size - (20 + 8 * 4 * 7)            # the file without its last record
    raw = bytearray(path.read_bytes())
    if damage == "torn":                        # a kill in the middle of the last write
        raw = raw[:size - 13]
    elif damage == "garbage":                   # a header that was never completed
        raw += b"FREC\x01\x00"
    else:                                       # a bit flipped in the last payload
        raw[-3] ^= 0x10
    path.write_bytes(bytes(raw))
    back = Journal(path, input_dim=5)
    expect = 3 if damage == "garbage" else 2
    assert len(back) == expect
    assert back.dropped_bytes == len(raw) - (size if damage == "garbage" else intact)
    assert path.stat().st_size == (size if damage == "garbage" else intact)
    back.position = len(back)                   # appending after the repair works
    back.append(*_batch(rng, 2))
    assert len(Journal(path, input_dim=5)) == expect + 1


def test_foreign_files_and_other_victims_are_refused(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_bytes(b"these are not query records at all")
    with pytest.raises(JournalError, match="not a fidelity journal"):
        Journal(other, input_dim=5)
    assert other.read_bytes() == b"these are not query records at all"   # left untouched
    Journal(tmp_path / "q.journal", input_dim=5)
    with pytest.raises(JournalError, match="5 inputs"):
        Journal(tmp_path / "q.journal", input_dim=6)


def test_oracle_chunks_journals_and_replays_without_paying(tmp_path):
    victim = F.ReLUNetwork.random(0, [6, 4, 3])
    x = np.random.default_rng(2).normal(size=(25, 6))
    first = F.Oracle(victim, chunk_size=10, journal=tmp_path / "q.journal")
    seen = []
    first.progress = seen.append
    y = first(x)
    assert [len(xr) for xr, _ in first.journal.records()] == [9, 8, 8]   # near-equal chunks
    assert len(first.journal) == 3 and [s["queries"] for s in seen] == [9, 17, 25]
    assert (first.queries, first.paid, first.replayed) == (25, 25, 0)
    second = F.Oracle(victim, journal=tmp_path / "q.journal")
    assert second.chunk_size == 10                          # adopted from the journal
    np.testing.assert_array_equal(second(x), y)
    assert (second.queries, second.paid, second.replayed) == (25, 0, 25)
    second(x[:3])                                           # past the journal: paid, appended
    assert second.paid == 3 and len(second.journal) == 4
    third = F.Oracle(victim, journal=tmp_path / "q.journal")
    with pytest.raises(JournalError, match="row 0 of this batch"):
        third(x[::-1])
    fourth = F.Oracle(victim, journal=tmp_path / "q.journal")
    np.testing.assert_array_equal(fourth(x[:4]), y[:4])     # a prefix of a record replays
    with pytest.raises(JournalError, match="row 2 of this batch"):
        fourth(np.concatenate([x[4:6], x[:3]]))


def test_budget_stop_then_resume_pays_each_row_once(tmp_path):
    victim = F.ReLUNetwork.random(3, [30, 10, 3])
    reference = F.extract(F.Oracle(victim, chunk_size=256), seed=4)
    path = tmp_path / "q.journal"
    stopped = F.Oracle(victim, budget=reference.queries // 2)
    with pytest.raises(F.QueryBudgetExceeded) as info:
        F.extract(stopped, seed=4, journal=path)
    assert info.value.result.status == "partial"
    assert Journal(path, input_dim=30).rows == stopped.paid
    resumed = F.Oracle(victim)
    result = F.extract(resumed, seed=4, journal=path)
    assert result.status == "ok" and result.queries == reference.queries
    assert resumed.replayed == stopped.paid
    assert stopped.paid + resumed.paid == reference.queries          # nothing paid twice
    for a, b in zip(result.network.weights + result.network.biases,
                    reference.network.weights + reference.network.biases):
        np.testing.assert_array_equal(a, b)
    again = F.Oracle(victim)
    F.extract(again, seed=4, journal=path)
    assert again.paid == 0 and again.replayed == reference.queries


def test_a_journal_from_another_seed_is_refused(tmp_path):
    victim = F.ReLUNetwork.random(3, [12, 5, 2])
    F.extract(F.Oracle(victim), seed=0, journal=tmp_path / "q.journal")
    with pytest.raises(JournalError, match="new journal path"):
        F.extract(F.Oracle(victim), seed=1, journal=tmp_path / "q.journal")


def test_deep_victim_stopped_in_the_layer_by_layer_path_resumes_from_the_journal(tmp_path):
    victim = F.ReLUNetwork.random(0, [10, 10, 10, 1])
    reference = F.extract(F.Oracle(victim), seed=0)
    assert len(reference.layers) == 2
    path = tmp_path / "deep.journal"
    stopped = F.Oracle(victim, budget=2_500)           # in layer 2's search (2,242 in all)
    with pytest.raises(F.QueryBudgetExceeded) as info:
        F.extract(stopped, seed=0, journal=path)
    assert info.value.result.layers                      # the cut came in the deep path
    resumed = F.Oracle(victim)
    result = F.extract(resumed, seed=0, journal=path)
    assert result.status == "ok" and result.queries == reference.queries
    assert stopped.paid + resumed.paid == reference.queries          # nothing paid twice
    for a, b in zip(result.network.weights + result.network.biases,
                    reference.network.weights + reference.network.biases):
        np.testing.assert_array_equal(a, b)
