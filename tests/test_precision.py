"""Issue 4: extraction across the victim's output precision, and on ill-conditioned victims.

The victims are built by ``benchmarks/precision.py`` (loaded from its file), so the tests and the
benchmark measure the same regimes. Bounds were measured (numbers beside each) and leave a margin
of a few hundred; a wrong or missing unit gives errors of 1e-3 or more, far above all of them.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fidelity as F
from fidelity import metrics

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "precision.py"
NOISE_NOTE = "noisier than float64"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("precision_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["precision_bench"] = module
    spec.loader.exec_module(module)
    return module


def _extract(answer, truth, *, input_scale=1.0, budget=None, **options):
    oracle = F.Oracle(answer, input_dim=truth.input_dim, budget=budget)
    res = F.extract(oracle, seed=0, throw=False, input_scale=input_scale, **options)
    x = np.random.default_rng(7).normal(size=(10_000, truth.input_dim)) * input_scale
    return res, F.evaluate(truth, res.network, inputs=x)


ARCHS = {"10-8-1": (0, [10, 8, 1]), "64-16-10": (1, [64, 16, 10])}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_float64_victim_has_no_noise_note(arch):
    seed, sizes = ARCHS[arch]
    net = F.ReLUNetwork.random(seed, sizes)
    res, rep = _extract(net, net)
    assert res.status == "ok"
    assert not any(NOISE_NOTE in n for n in res.notes)
    assert rep.fidelity == 1.0 and rep.max_rel_error <= 1e-9


@pytest.mark.parametrize("arch", list(ARCHS))
def test_float32_victim(bench, arch):
    # measured: max rel error 5.1e-8 (10-8-1), 1.0e-7 (64-16-10); float32 rounding is 6e-8
    seed, sizes = ARCHS[arch]
    answer, truth = bench.float32_victim(F.ReLUNetwork.random(seed, sizes))
    res, rep = _extract(answer, truth)
    assert any(NOISE_NOTE in n for n in res.notes), res.notes
    assert res.hidden_size == sizes[1]
    assert rep.fidelity == 1.0
    assert rep.max_rel_error <= 1e-4
    assert bench.loose_param_error(truth, res.network)["param_error_loose"] <= 1e-4


@pytest.mark.parametrize("arch", list(ARCHS))
def test_rounded_to_8_decimals(bench, arch):
    # answers carry an absolute error up to 5e-9 against |f| of 1 to 10 (~30 bits); the regression
    # averages it over ~3P answers. Measured: max rel error 2.8e-9 (10-8-1), 1.2e-9 (64-16-10),
    # i.e. the rounding itself; the bound 1e-6 is 300x that and 1000x below a wrong unit.
    seed, sizes = ARCHS[arch]
    answer, truth = bench.rounded_victim(F.ReLUNetwork.random(seed, sizes), 8)
    res, rep = _extract(answer, truth)
    assert res.status == "ok"
    assert any(NOISE_NOTE in n for n in res.notes), res.notes
    assert res.hidden_size == sizes[1]
    assert rep.fidelity == 1.0
    assert rep.max_rel_error <= 1e-6


@pytest.mark.parametrize("decimals", [12, 10])
def test_rounded_near_float64(bench, decimals):
    # Rounding to 10-12 decimals is below float64 noise at |f| ~ 1e3 (the far end of a line) but
    # above it near the origin: the noise floor must be read at the worse end. Before that fix
    # this victim gave 0 of 16 units (10 decimals, 754,772 queries) or 462 units (12 decimals).
    answer, truth = bench.rounded_victim(F.ReLUNetwork.random(1, [64, 16, 10]), decimals)
    oracle = F.Oracle(answer, input_dim=64, budget=20_000)
    res = F.extract(oracle, seed=0, throw=False)
    rep = F.evaluate(truth, res.network, num_samples=10_000)
    assert res.status == "ok" and res.hidden_size == 16
    assert rep.fidelity == 1.0 and rep.max_rel_error <= 1e-8


@pytest.mark.parametrize("pattern", ["decades", "pair", "offset", "tiny_inputs"])
def test_ill_conditioned_float64(bench, pattern):
    # measured max rel errors: decades 3.8e-13, pair 2.4e-12, offset 1.2e-12, tiny_inputs 1.7e-13
    victim = bench.ill_conditioned(F.ReLUNetwork.random(1, [64, 16, 10]), pattern)
    scale = 1e-3 if pattern == "tiny_inputs" else 1.0
    res, rep = _extract(victim, victim, input_scale=scale)
    assert res.status == "ok"
    assert not any(NOISE_NOTE in n for n in res.notes)
    assert res.hidden_size == 16
    assert rep.fidelity == 1.0
    assert rep.max_rel_error <= 1e-9


def test_ill_conditioned_patterns_are_what_they_say(bench):
    net = F.ReLUNetwork.random(1, [64, 16, 10])
    dec = bench.ill_conditioned(net, "decades")
    ratio = np.abs(dec.weights[1]).max(0) / np.abs(net.weights[1]).max(0)
    assert np.allclose(ratio, 10.0 ** (-6 * np.arange(16) / 15))
    pair = bench.ill_conditioned(net, "pair")
    diff = np.r_[pair.weights[0][1] - pair.weights[0][0], pair.biases[0][1] - pair.biases[0][0]]
    assert np.linalg.norm(diff) == pytest.approx(1e-7, rel=1e-6)
    assert np.allclose(bench.ill_conditioned(net, "offset").biases[1], net.biases[1] + 1e3)
    assert np.allclose(bench.ill_conditioned(net, "tiny_inputs").weights[0], net.weights[0] * 1e3)


def test_loose_matching_pairs_permuted_scaled_units(bench):
    net = F.ReLUNetwork.random(0, [6, 5, 2])
    perm, c = np.array([3, 0, 4, 1, 2]), np.array([2.0, 0.5, 3.0, 1.0, 7.0])
    w, b, a = net.weights[0][perm] * c[:, None], net.biases[0][perm] * c, net.weights[1][:, perm] / c
    same = F.ReLUNetwork([w, a], [b, net.biases[1]])
    out = bench.loose_param_error(net, same)
    assert out["param_error_loose"] <= 1e-14 and out["unpaired"] == 0


def test_unit_errors_name_the_perturbed_unit():
    net = F.ReLUNetwork.random(0, [6, 5, 2])
    perm, c = np.array([3, 0, 4, 1, 2]), np.array([2.0, 0.5, 3.0, 1.0, 7.0])
    w, b, a = net.weights[0][perm] * c[:, None], net.biases[0][perm] * c, net.weights[1][:, perm] / c
    a = a.copy()
    a[1, 2] += 1e-9 / c[2]            # extracted unit 2 (victim unit 4), one output weight
    same = F.ReLUNetwork([w, a], [b, net.biases[1]])
    err = F.metrics.unit_errors(net, same)
    norm = np.linalg.norm(np.r_[w[2], b[2]])
    assert err[2] == pytest.approx(1e-9 * norm / c[2], rel=1e-6)
    assert np.all(np.delete(err, 2) <= 1e-15)
    assert err.max() == F.metrics.match_units(net, same)[4]
    other = F.ReLUNetwork.random(9, [6, 5, 2])      # no unit in common
    assert np.isnan(F.metrics.unit_errors(net, other)).all()


def test_run_one_records_errors_not_raises(bench):
    net = F.ReLUNetwork.random(0, [10, 8, 1])

    def broken(x):
        raise RuntimeError("victim down")

    rec = bench.run_one("10-8-1", "float64", net, broken, samples=100)
    assert rec["status"].startswith("error: ")
    ok = bench.run_one("10-8-1", "round8", net, bench.rounded_victim(net, 8)[0], samples=1000)
    assert ok["status"] == "ok" and ok["fidelity_gauss"] == 1.0 and ok["noise_note"]


def _unit_errors(truth, net):
    """Actual error of each extracted unit's normalised row and output weights."""
    def norm(n):
        rows = np.concatenate([n.weights[0], n.biases[0][:, None]], 1)
        s = np.linalg.norm(rows, axis=1)
        return rows / s[:, None], n.weights[1] * s[None]
    rv, av = norm(truth)
    re, ae = norm(net)
    out = []
    for i in range(re.shape[0]):
        j = int(np.argmax(np.abs(rv @ re[i])))
        out.append(max(np.abs(rv[j] - re[i]).max(),
                       np.abs(av[:, j] - ae[:, i]).max() / np.abs(av[:, j]).max()))
    return np.array(out)


@pytest.mark.parametrize("regime", ["float64", "float32"])
def test_error_estimates_cover_actual_errors(bench, regime):
    net = F.ReLUNetwork.random(1, [64, 16, 10])
    answer, truth = (net, net) if regime == "float64" else bench.float32_victim(net)
    res, _ = _extract(answer, truth)
    est = np.array([n.error_estimate for n in res.neurons])
    actual = _unit_errors(truth, res.network)
    assert np.all(actual <= est), (actual / est).max()
    assert res.error_estimate == est.max()
    assert (res.noise.float64) == (regime == "float64")
    # distinct units: none is named as two merged neurons
    assert not [e for e in res.events if e.kind == F.Kind.TWINS_MERGED]
    if regime == "float64":
        assert 0 < res.rank_two < 8                     # measured per unit, none rank two


# ---------------------------------------------------------------------------- issue 15
def test_combined_victims_have_every_pattern(bench):
    sizes = [20, 8, 3]
    base = F.ReLUNetwork.random(4, sizes)
    net = bench.combined(4, sizes)
    a2 = np.abs(net.weights[1]).max(0) / np.abs(base.weights[1]).max(0)
    assert a2.max() / a2.min() == pytest.approx(1e6, rel=1e-9)          # six decades
    rows = np.c_[net.weights[0] * 1e-3, net.biases[0]]                    # tiny inputs undone
    gaps = np.linalg.norm(rows[:, None] - rows[None], axis=2) + np.eye(8)
    assert np.sort(gaps.min(1))[:2] == pytest.approx([1e-7, 1e-7], rel=1e-6)   # the pair
    w = rows[:, :-1] / np.linalg.norm(rows[:, :-1], axis=1)[:, None]
    parallel = np.abs(w @ w.T) - np.eye(8) >= 1 - 1e-15
    assert parallel.sum() == 2                                            # parallel twins
    assert np.allclose(net.biases[1], base.biases[1] + 1e3)
    # other seeds pick other units
    assert not np.array_equal(np.argsort(np.abs(bench.combined(5, sizes).weights[1]).max(0)),
                              np.argsort(np.abs(net.weights[1]).max(0)))


@pytest.mark.parametrize("seed,sizes", [(29, [40, 6, 4]), (14, [20, 8, 3])])
def test_merged_twins_with_different_output_weights_are_named(bench, seed, sizes):
    # a pair 1e-7 apart whose output weights differ, found as one kink: one unit carries both
    # and the network is verified; the note names that unit from its rank-two jump
    victim = bench.combined(seed, sizes)
    res, _ = _extract(victim, victim, input_scale=1e-3, budget=15_000)
    named = [e for e in res.events if e.kind == F.Kind.TWINS_MERGED and "rank two" in e.message]
    assert res.status == "ok" and len(named) == 1
    assert res.rank_two > 8 and sum(n.rank_two > 8 for n in res.neurons) == 1


COMBINED_SEEDS = [([20, 8, 1], s) for s in range(10)] + [([20, 8, 3], s) for s in range(10, 20)]


def test_combined_victims(bench):
    # 20 generator seeds, k = 1 and k = 3 (issue 15): every one 'ok' with fidelity 1.0 and
    # outputs within 1e-9 of the range, the black-box bound within the check lines' tolerance
    # and the resolution reported
    short, resolutions = [], []
    for sizes, seed in COMBINED_SEEDS:
        victim = bench.combined(seed, sizes)
        try:
            res, rep = _extract(victim, victim, input_scale=1e-3, budget=15_000)
        except (F.UnsupportedArchitecture, F.QueryBudgetExceeded) as exc:
            short.append((sizes[-1], seed, type(exc).__name__))
            continue
        x = np.random.default_rng(7).normal(size=(10_000, sizes[0])) * 1e-3
        err = rep.max_abs_error / bench.output_range(victim, x)
        assert res.output_error_points >= 2 * 16 and 0 < res.resolution <= 1e-5
        resolutions.append(res.resolution)
        if res.status == "ok":
            assert rep.fidelity == 1.0, (sizes, seed)
            assert res.output_error <= max(1e-8, res.resolution)
        if res.status != "ok" or err > 1e-9:
            short.append((sizes[-1], seed, res.status, f"{err:.1e}"))
    assert not short, short
    # the resolution is the check lines' (1e-8 of the range but where the answers' rounding
    # behind the offset is coarser); with the point check's allowance it was 1e-7 to 8e-7
    assert np.median(resolutions) <= 2e-8


def test_check_answers_far_from_the_network_call_for_a_second_polish(bench):
    # generator 50-12-1 s28 (not one of the tuned seeds): 'ok' at 1.2e-9 of the range after one
    # polish of one unit, its check answers already 8e-10 off; the second polish measures the
    # least precise units again with half the queries spent (6.5e-12)
    victim = bench.combined(28, [50, 12, 1])
    res, rep = _extract(victim, victim, input_scale=1e-3, budget=30_000)
    x = np.random.default_rng(7).normal(size=(10_000, 50)) * 1e-3
    assert res.status == "ok" and rep.fidelity == 1.0
    assert len(res.events_of(F.Kind.POLISHED)) == 2
    assert rep.max_abs_error / bench.output_range(victim, x) <= 1e-10
    assert res.output_error <= 1e-10


@pytest.mark.parametrize("sizes, seed", [([100, 20, 1], 0), ([100, 20, 1], 1),
                                         ([100, 20, 1], 2), ([784, 32, 1], 0)])
def test_wide_combined_victims_with_one_output(bench, sizes, seed):
    # the 100-20-1 (refused before) and a 784-wide one (refused: a far-out kink gave a
    # row 8e-2 off and its regions sent the crossing corrections diverging)
    victim = bench.combined(seed, sizes)
    res, rep = _extract(victim, victim, input_scale=1e-3, budget=200_000)
    x = np.random.default_rng(7).normal(size=(10_000, sizes[0])) * 1e-3
    assert res.status == "ok" and rep.fidelity == 1.0
    assert rep.max_abs_error / bench.output_range(victim, x) <= 1e-9


def test_an_ok_is_never_contradicted_by_the_check_answers(bench):
    # 100-20-1 generator victims: seeds 3 and 6 ended 'ok' at 3e-8 and 5e-8 of the range (the
    # last check lines agreed, earlier ones did not). Whatever the status, an 'ok' network
    # agrees with every check answer to what that check allowed, and with fresh inputs to 1e-8
    for seed in range(8):
        victim = bench.combined(seed, [100, 20, 1])
        res, rep = _extract(victim, victim, input_scale=1e-3, budget=60_000)
        if res.status == "ok":
            x = np.random.default_rng(7).normal(size=(10_000, 100)) * 1e-3
            assert res.output_error <= res.resolution, seed
            assert rep.max_abs_error / bench.output_range(victim, x) <= 1e-8, seed
        else:
            assert res.status == "unverified", seed
            assert res.events_of(F.Kind.CHECKS_DISAGREE) or res.events_of(
                F.Kind.UNIT_MAY_BE_MISSING), seed


def test_a_jump_beside_a_kink_the_search_missed_is_measured_closer():
    # units A (kink t = 0) and B (t = 1) on the line x0 + t e1; a small unit S kinks at t = 0.3,
    # between them, and the search is told only of A's and B's kinks. Region [0, 1] is measured
    # at t = 0.5, where S is on: the jump across A takes S's gradient too and its row misses
    # A's kink. Measured closer (t in [0, 1/8]), A's row is exact, and region [0, 1] (across
    # S's kink) is left out of the fit
    from fidelity import measure, search
    from fidelity.context import Run, Tolerances
    rows = np.array([[1.0, 0.5, 0.0], [1.0, -0.7, -1.0], [1.0, 2.0, -0.3]])
    victim = F.ReLUNetwork([rows[:, :2], np.array([[1.0, 2.0, 1e-3]])],
                           [rows[:, 2], np.array([0.5])])
    run = Run(F.Oracle(victim), seed=0, t_max=4.0, input_scale=1.0, step_cap=1.0,
              check_reserve=0, crossing_rel_error=1e-10)
    run.tol = Tolerances(rel=256 * 2.2e-16, abs=0.0, delta=4e-6, min_delta=4e-12,
                         sign_tol=1e-3, check_tol=1e-8, polish_tol=1e-9)
    x0, v = run.new_line()
    x0, v = np.zeros(2), np.array([1.0, 0.0])
    run.drawn[-1] = (x0, v)
    kinks = search.LineKinks(x0=x0, v=v, t_max=4.0, t=np.array([0.0, 1.0]),
                             verified=np.ones(2, bool), unresolved=0,
                             slopes=np.full((3, 1), np.nan))
    assert measure.measure_line(run, measure.MeasureConfig(), x0, v, kinks) == 2
    got = np.array([j.row for j in run.evidence.jumps])
    want = rows[:2] / np.linalg.norm(rows[:2, :2], axis=1)[:, None]
    assert np.abs(got - want).max() < 1e-9
    assert run.stage["gradients"] == 5 * 3                 # 3 regions, then 2 close ones
    used = run.evidence.all_regions()
    assert used.size == 4 and not ((used.t_lo == 0.0) & (used.t_hi == 1.0)).any()
    assert run.evidence.regions[0].size == 3               # the line is still tiled


@pytest.mark.parametrize("arch", ["10-8-1", "64-16-10", "20-6-2"])
def test_reported_error_bounds_actual_within_100x(arch):
    # the reported estimate bounds evaluate's parameter error and is within 100x of it, overall
    # and unit by unit (measured per unit: 6.2x-21x, 3.4x-22x, 5.5x-16x; the LS errors of one
    # solve gave 27x-206x on 10-8-1 and 0.26x-230x over benchmarks/core.py)
    seed, sizes = {"10-8-1": (0, [10, 8, 1]), "64-16-10": (1, [64, 16, 10]),
                   "20-6-2": (0, [20, 6, 2])}[arch]
    net = F.ReLUNetwork.random(seed, sizes)
    res, rep = _extract(net, net)
    assert res.status == "ok"
    assert rep.param_error <= res.error_estimate <= 100 * rep.param_error
    _assert_units_within_100x(net, res)
    assert all(n.flag_estimate >= n.error_estimate for n in res.neurons)
    # the black-box bound: the check answers against the network, a few ulps of the range
    assert res.output_error_points >= 32 and res.output_error <= 1e-10
    assert res.resolution == pytest.approx(1e-8, rel=1e-6) or res.resolution > 1e-8


def _assert_units_within_100x(victim, res, low=1.0, high=100.0):
    ratio = np.array([n.error_estimate for n in res.neurons]) / metrics.unit_errors(victim,
                                                                                 res.network)
    assert np.isfinite(ratio).all() and low <= ratio.min() and ratio.max() <= high, (
        ratio.min(), ratio.max())


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), d=st.integers(8, 60), h=st.integers(3, 16),
       k=st.integers(1, 3))
def test_each_units_estimate_is_near_its_error(seed, d, h, k):
    # random small one-layer victims: every unit's estimate within [0.5x, 200x] of its own
    # error (measured on 529 units of 51 such victims: 0.75x-139x, 3 units outside [1x, 100x],
    # the low ones h = 3 victims with errors of 1e-14, 70 ulps; core and sweep: 1.3x-58x)
    assume(h <= d)
    net = F.ReLUNetwork.random(seed, [d, h, k])
    res, _ = _extract(net, net)
    assume(res.status == "ok" and res.hidden_size == h)
    _assert_units_within_100x(net, res, low=0.5, high=200.0)
