"""Smoke tests of the issue-3 sweep harness (benchmarks/sweep.py) on a tiny victim."""

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

# the fields every run record carries (issue 3)
FIELDS = ("method", "victim", "params", "hidden", "outputs", "queries", "fidelity",
          "max_rel_error", "param_error", "seconds", "compile_seconds", "peak_mb", "backend",
          "device", "status")


@pytest.fixture(scope="module")
def sweep():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("sweep")
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("sweep", None)
        sys.modules.pop("plots", None)


def test_victim_keys_round_trip(sweep):
    import fidelity as F

    for spec in sweep.sweep_specs(quick=False) + sweep.sweep_specs(quick=True):
        assert sweep.VictimSpec.from_key(spec.key) == spec
        if spec.kind == "random":
            assert spec.params == F.ReLUNetwork.random(0, list(spec.sizes)).num_params
    keys = {s.key for s in sweep.sweep_specs(quick=False)}
    assert {"random-784-32-1-s0", "digits-784-128-10-s0", "random-784-1024-10-s0",
            "random-3072-256-10-s0"} <= keys
    with pytest.raises(ValueError):
        sweep.VictimSpec.from_key("random-784-32")
    with pytest.raises(ValueError):
        sweep.VictimSpec("trained", (784, 32, 10))


def test_time_cap_interrupts(sweep):
    t0 = time.perf_counter()
    with pytest.raises(sweep._TimeUp):
        with sweep.time_cap(0.2):
            while time.perf_counter() - t0 < 5:
                pass
    assert time.perf_counter() - t0 < 2


def test_art_is_skipped_past_a_timeout(sweep):
    done = [dict(method="art", victim="random-784-64-10-s0", status="timeout")]
    assert sweep._skip_art(sweep.VictimSpec("random", (784, 128, 10)), done).startswith("skipped")
    assert sweep._skip_art(sweep.VictimSpec("random", (784, 32, 10)), done) is None
    assert sweep._skip_art(sweep.VictimSpec("digits", (784, 128, 10)), done) is None
    assert sweep._skip_art(sweep.VictimSpec("random", (784, 128, 1)), done) is None


def test_sweep_writes_records_table_and_plots(sweep, tmp_path):
    pytest.importorskip("matplotlib")
    art = importlib.util.find_spec("art") is not None
    # ART finishes this victim in about a second (10,654 queries); the cap bounds the test
    assert sweep.main(["--victims", "random-20-6-3-s0", "--out", str(tmp_path), "--samples",
                       "3000", "--art-timeout", "20"]) == 0
    records = json.loads((tmp_path / "sweep.json").read_text())
    methods = [r["method"] for r in records]
    assert methods.count("paper") == 3
    assert methods.count("art") == (1 if art else 0)
    for rec in records:
        assert set(FIELDS) <= set(rec), set(FIELDS) - set(rec)
        assert rec["status"] == "ok" or rec["status"] in ("timeout",) \
            or rec["status"].startswith(("error: ", "skipped: "))
    fid = records[methods.index("fidelity")]
    assert fid["status"] == "ok" and fid["victim"] == "random-20-6-3-s0"
    assert fid["params"] == 6 * 21 + 3 * 7 and fid["hidden"] == 6 and fid["outputs"] == 3
    assert fid["fidelity"] == 1.0 and fid["max_rel_error"] < 1e-9 and fid["param_error"] < 1e-9
    assert fid["queries"] > 0 and fid["seconds"] > 0 and fid["compile_seconds"] >= 0
    assert fid["peak_mb"] > 0 and fid["backend"] == "cpu" and fid["device"]
    assert fid["floor_queries"] == pytest.approx((fid["params"] - 6) / 3)
    if art:
        rec = records[methods.index("art")]
        assert rec["queries"] > 0 and rec["victim"] == "random-20-6-3-s0"
        if rec["status"] == "ok":   # ART is approximate: its numbers are recorded, not judged
            assert 0 <= rec["fidelity"] <= 1 and rec["hidden"] == 6
    table = (tmp_path / "sweep.md").read_text()
    assert "| fidelity | random 20-6-3 |" in table and "How cost grows" in table
    for png in ("sweep_queries.png", "sweep_time.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_depth_benchmark_stops_a_run_at_its_time_cap_and_says_how_far_it_got(sweep):
    # benchmarks/depth.py: past its time cap a run's oracle takes no more rows, so the
    # extraction returns what it has (the hidden layers recovered first), which the row reports
    import fidelity as F

    depth = importlib.import_module("depth")
    try:
        # a victim that takes minutes on any machine: 40-20-10-10-1 came to fit in the
        # second on a fast one once its searches were hinted
        victim = F.ReLUNetwork.random(1, [100, 50, 50, 50, 10])
        t0 = time.perf_counter()
        rec = depth.run("random 100-50-50-50-10 s1", victim, None, 1_000, 1.0)
        assert time.perf_counter() - t0 < 1.0 + depth.GRACE
        assert rec["status"] == "timeout" and rec["queries"] > 0
        assert rec["queries_outside"] == rec["queries"] - sum(rec["layer_queries"])
        row = dict(layers_done=[20, 10], layer_queries=[771, 21_538], queries_outside=9_000)
        assert depth._widths(row) == "[20, 10] first (771 + 21,538 queries; 9,000 outside them)"
        assert depth._widths(dict(widths=[20, 10, 10])) == "[20, 10, 10]"
    finally:
        sys.modules.pop("depth", None)
