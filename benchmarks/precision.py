"""Issue-4 benchmark: what each output precision of the victim allows the extraction to recover.

    python benchmarks/precision.py [--quick] [--out benchmarks/results/precision.json]

Regimes: float64 answers; float32 arithmetic; float64 answers rounded to n decimals; mpmath
refinement at 50 digits; float64 victims made ill-conditioned on purpose (output weights
over six decades, two nearly equal rows, a large output offset, tiny inputs); and victims with
all of those at once from a randomized generator (:func:`combined`; ``--combined`` runs only
those, ``benchmarks/results/precision_combined.json``). For each run it
reports queries, queries per parameter, fidelity on Gaussian inputs (and on the digits images
for 784-wide victims), the max relative error, the parameter error (with ``fidelity.evaluate``'s
strict matching, and with a loose greedy |cos| matching that still pairs units recovered to a
few digits only), time, status and units found against the true number.

Ground truth (the victim's weights) is used only by the metrics, after the extraction.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import time
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np

import fidelity as F
from fidelity import victims

DECIMALS = (12, 10, 8, 6, 4)


# ---------------------------------------------------------------------------- victims
def float32_victim(net: F.ReLUNetwork):
    """A callable answering in float32 arithmetic, and the float64 network it computes exactly."""
    v32 = net.astype(np.float32)

    def answer(x):
        return np.asarray(v32(np.asarray(x, np.float32)), np.float64)

    return answer, v32.astype(np.float64)


def rounded_victim(net: F.ReLUNetwork, decimals: int):
    """A callable answering float64 outputs rounded to ``decimals`` decimals."""
    def answer(x):
        return np.round(np.asarray(net(np.asarray(x, np.float64)), np.float64), decimals)

    return answer, net


def ill_conditioned(net: F.ReLUNetwork, pattern: str, seed: int = 0) -> F.ReLUNetwork:
    """The float64 victim ``net`` made ill-conditioned by ``pattern`` (see the module doc).

    ``'decades'``: unit i's output column times ``10**(-6 i / (h - 1))``; ``'pair'``: unit 1's row
    replaced by unit 0's plus ``1e-7`` times a random unit vector; ``'parallel'``: unit 1 is unit
    0 scaled by ``1 + 1e-7`` with its bias moved by ``1e-7 |w|`` (parallel hyperplanes); ``'offset'``: ``b2 += 1e3``;
    ``'tiny_inputs'``: ``W1 *= 1e3`` (extract with ``input_scale=1e-3``).
    """
    w1, b1 = net.weights[0].copy(), net.biases[0].copy()
    w2, b2 = net.weights[1].copy(), net.biases[1].copy()
    h = w1.shape[0]
    if pattern == "decades":
        w2 = w2 * 10.0 ** (-6.0 * np.arange(h) / (h - 1))[None, :]
    elif pattern == "pair":
        rng = np.random.default_rng([seed, 7])     # not the victim's own stream
        u = rng.normal(size=w1.shape[1] + 1)
        u /= np.linalg.norm(u)
        w1[1], b1[1] = w1[0] + 1e-7 * u[:-1], b1[0] + 1e-7 * u[-1]
    elif pattern == "parallel":
        # the difference along the row itself: two parallel hyperplanes ~1e-7 apart, which no
        # line separates further (the engine keeps them as one unit and says so)
        w1[1], b1[1] = w1[0] * (1 + 1e-7), b1[0] + 1e-7 * np.linalg.norm(w1[0])
    elif pattern == "offset":
        b2 = b2 + 1e3
    elif pattern == "tiny_inputs":
        w1 = w1 * 1e3
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return F.ReLUNetwork([w1, w2], [b1, b2])


PATTERNS = ("decades", "pair", "parallel", "offset", "tiny_inputs")


def combined(seed: int, sizes, *, decades: float = 6.0, gap: float = 1e-7, offset: float = 1e3,
             input_scale: float = 1e-3) -> F.ReLUNetwork:
    """A float64 victim with every pattern of :func:`ill_conditioned` at once (issue 15).

    From ``ReLUNetwork.random(seed, sizes)`` (one hidden layer, ``h >= 4``), with the seed's own
    random choices: the output columns are scaled by ``10**-e`` with ``e`` spread evenly over
    ``[0, decades]`` in a random order (output weights over six decades); a random unit ``b``
    becomes the twin of a random unit ``a`` (its row ``[w, b]`` is ``a``'s plus ``gap`` times a
    random unit vector); two other random units are parallel twins (the second is the first
    scaled by ``1 + gap``, its bias moved by ``gap |w|``); ``offset`` is added to every output
    bias; and the rows are divided by ``input_scale`` (extract with ``input_scale``).
    """
    net = F.ReLUNetwork.random(seed, sizes)
    w1, b1 = net.weights[0].copy(), net.biases[0].copy()
    w2, b2 = net.weights[1].copy(), net.biases[1].copy()
    h = w1.shape[0]
    if h < 4 or len(net.weights) != 2:
        raise ValueError("combined victims need one hidden layer of at least 4 units")
    rng = np.random.default_rng([seed, 15])     # not the victim's own stream
    w2 = w2 * 10.0 ** (-decades * rng.permutation(h) / (h - 1))[None, :]
    a, b, p, q = rng.choice(h, 4, replace=False)
    u = rng.normal(size=w1.shape[1] + 1)
    u *= gap / np.linalg.norm(u)
    w1[b], b1[b] = w1[a] + u[:-1], b1[a] + u[-1]
    w1[q], b1[q] = w1[p] * (1 + gap), b1[p] + gap * np.linalg.norm(w1[p])
    return F.ReLUNetwork([w1 / input_scale, w2], [b1, b2 + offset])


def output_range(net: F.ReLUNetwork, x: np.ndarray) -> float:
    """The largest spread ``max f_i - min f_i`` of one output over the inputs ``x``."""
    y = np.asarray(net(x), np.float64)
    return float((y.max(0) - y.min(0)).max())


# ---------------------------------------------------------------------------- metrics
def loose_param_error(victim: F.ReLUNetwork, extracted: F.ReLUNetwork) -> dict:
    """Parameter error under greedy |cos| matching (no threshold).

    Each unit is normalised to ``|[w, b]| = 1`` (output weights scaled inversely), units are paired
    greedily by the largest ``|cos|`` of their normalised rows, and the max abs difference over
    paired rows, their output weights and the output bias is reported, with the worst pair's
    ``1 - |cos|``. Units left unpaired (a size mismatch) are counted.
    """
    def norm(net):
        rows = np.concatenate([np.asarray(net.weights[0], np.float64),
                               np.asarray(net.biases[0], np.float64)[:, None]], 1)
        n = np.linalg.norm(rows, axis=1)
        n = np.where(n > 0, n, 1.0)
        return rows / n[:, None], np.asarray(net.weights[1], np.float64) * n[None, :]

    rv, av = norm(victim)
    re, ae = norm(extracted)
    cos = np.abs(rv @ re.T)
    pairs, vi, ej = [], set(), set()
    for flat in np.argsort(-cos, axis=None):
        i, j = np.unravel_index(flat, cos.shape)
        if i in vi or j in ej:
            continue
        pairs.append((int(i), int(j)))
        vi.add(i)
        ej.add(j)
    err = float(np.abs(np.asarray(victim.biases[1], np.float64)
                       - np.asarray(extracted.biases[1], np.float64)).max())
    worst_cos = 0.0
    for i, j in pairs:
        err = max(err, float(np.abs(rv[i] - re[j]).max()), float(np.abs(av[:, i] - ae[:, j]).max()))
        worst_cos = max(worst_cos, 1.0 - float(cos[i, j]))
    return dict(param_error_loose=err, worst_one_minus_cos=worst_cos,
                unpaired=rv.shape[0] + re.shape[0] - 2 * len(pairs))


def output_bits(regime: str, scale: float) -> float:
    """Bits of precision of the answers at output size ``scale``."""
    if regime in ("float64",) or regime.startswith("ill:"):
        return 52.0
    if regime == "float32":
        return 23.0
    if regime.startswith("round"):
        n = int(regime[len("round"):])
        return float(math.log2(max(scale, 1e-300) / 10.0 ** (-n)))
    if regime.startswith("mp"):
        return float(int(regime[2:]) * math.log2(10))
    return float("nan")


# ---------------------------------------------------------------------------- one run
def run_one(name: str, regime: str, truth: F.ReLUNetwork, answer: Callable, *, images=None,
            samples: int = 100_000, input_scale: float = 1.0, mp_dps: Optional[int] = None,
            budget: Optional[int] = None, cap_s: int = 150) -> dict:
    """Extracts ``answer`` (a callable or network), evaluates against ``truth``; never raises.

    ``budget`` defaults to ``60 P + 20000`` rows (``P`` parameters); ``cap_s`` caps the run's wall time (SIGALRM; the run is then recorded as an error).
    """
    rec = dict(victim=name, regime=regime, params=truth.num_params, true_hidden=truth.sizes[1])
    budget = budget if budget is not None else 60 * truth.num_params + 20_000
    t0 = time.perf_counter()

    def on_alarm(signum, frame):
        raise TimeoutError(f"time cap of {cap_s} s reached")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(cap_s)
    try:
        with jax.enable_x64(True):
            if mp_dps is not None:
                oracle = F.Oracle(truth, precision="mp", budget=budget)
                res = F.extract(oracle, seed=0, throw=False, precision="mp", dps=mp_dps)
                rec["f64_queries"] = res.queries - res.stage_queries.get("mp", 0)
            else:
                oracle = F.Oracle(answer, input_dim=truth.input_dim, budget=budget)
                res = F.extract(oracle, seed=0, throw=False, input_scale=input_scale)
            seconds = time.perf_counter() - t0
            x = np.random.default_rng(1).normal(size=(samples, truth.input_dim)) * input_scale
            rep = F.evaluate(truth, res.network, inputs=x)
            net64 = res.network.astype(np.float64) if res.network.dtype == object else res.network
            loose = loose_param_error(truth, net64)
            scale = float(np.abs(truth(x[:2000])).max())
            rec.update(error_over_range=rep.max_abs_error / max(output_range(truth, x), 1e-300),
                       error_estimate=res.error_estimate, output_error=res.output_error,
                       output_error_points=res.output_error_points,
                       resolution=res.resolution, rank_two=res.rank_two)
            rec.update(status=res.status, hidden=res.hidden_size, queries=res.queries,
                       queries_per_param=res.queries / truth.num_params, seconds=seconds,
                       fidelity_gauss=rep.fidelity, max_rel_error=rep.max_rel_error,
                       max_abs_error=rep.max_abs_error, param_error=rep.param_error,
                       missing=rep.missing, extra=rep.extra, output_scale=scale,
                       output_bits=output_bits(regime, scale),
                       noise_note=any("noisier than float64" in n for n in res.notes), **loose)
            if images is not None and truth.input_dim == images.shape[1]:
                ri = F.evaluate(truth, res.network, inputs=images)
                rec.update(fidelity_digits=ri.fidelity, max_rel_error_digits=ri.max_rel_error)
    except Exception as exc:   # a benchmark records failures rather than stopping
        partial = getattr(exc, "result", None)
        rec.update(status=f"error: {type(exc).__name__}: {exc}"[:300],
                   seconds=time.perf_counter() - t0)
        if partial is not None:
            rec.update(queries=partial.queries, hidden=partial.hidden_size)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return rec


def cases(quick: bool):
    """(victim name, base float64 network, mp?) per architecture."""
    if quick:
        return [("10-8-1", F.ReLUNetwork.random(0, [10, 8, 1])),
                ("64-16-10", F.ReLUNetwork.random(1, [64, 16, 10]))]
    return [("10-8-1", F.ReLUNetwork.random(0, [10, 8, 1])),
            ("64-16-10", F.ReLUNetwork.random(1, [64, 16, 10])),
            ("784-32-10", F.ReLUNetwork.random(0, [784, 32, 10]))]


def all_runs(quick: bool, samples: int, images):
    """Yields the records of every regime on every victim."""
    archs = cases(quick)
    for name, net in archs:
        yield run_one(name, "float64", net, net, images=images, samples=samples)
        ans, truth = float32_victim(net)
        yield run_one(name, "float32", truth, ans, images=images, samples=samples)
        for n in DECIMALS:
            ans, truth = rounded_victim(net, n)
            yield run_one(name, f"round{n}", truth, ans, images=images, samples=samples)
        if net.input_dim <= 64:   # mpmath forward passes are slow on 784-wide victims
            yield run_one(name, "mp50", net, None, samples=min(samples, 10_000), mp_dps=50)
    # ill-conditioned float64 victims
    name, net = archs[1] if quick else archs[-1]
    for pattern in PATTERNS:
        victim = ill_conditioned(net, pattern)
        scale = 1e-3 if pattern == "tiny_inputs" else 1.0
        yield run_one(name, f"ill:{pattern}", victim, victim, images=None, samples=samples,
                      input_scale=scale)
    yield from combined_runs(quick, samples)


# the generator's victims: (sizes, seeds); small ones for every run, bigger ones in full runs
COMBINED_SMALL = (([20, 8, 1], range(0, 10)), ([20, 8, 3], range(10, 20)))
COMBINED_FULL = (([100, 20, 1], range(3)), ([784, 32, 1], range(1)), ([784, 32, 10], range(1)))


def combined_runs(quick: bool, samples: int):
    """Yields the records of the generator's victims (:func:`combined`), at input scale 1e-3."""
    groups = COMBINED_SMALL + (() if quick else COMBINED_FULL)
    for sizes, seeds in groups:
        for seed in seeds:
            victim = combined(seed, sizes)
            rec = run_one("-".join(map(str, sizes)), f"combined s{seed}", victim, victim,
                          samples=samples, input_scale=1e-3)
            yield rec


# ---------------------------------------------------------------------------- output
HEADER = (f"{'victim':>10} {'regime':>16} {'status':>10} {'units':>6} {'queries':>8} {'q/par':>6} "
          f"{'fid':>7} {'fid dig':>7} {'max rel':>8} {'par err':>8} {'loose':>8} {'bits':>5} "
          f"{'s':>6}")


def row(r: dict) -> str:
    def g(key, fmt):
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"
    status = r.get("status", "?")
    status = status if len(status) <= 10 else status[:10]
    units = f"{r.get('hidden', '-')}/{r['true_hidden']}"
    return (f"{r['victim']:>10} {r['regime']:>16} {status:>10} {units:>6} {g('queries', 'd'):>8} "
            f"{g('queries_per_param', '.2f'):>6} {g('fidelity_gauss', '.5f'):>7} "
            f"{g('fidelity_digits', '.5f'):>7} {g('max_rel_error', '.1e'):>8} "
            f"{g('param_error', '.1e'):>8} {g('param_error_loose', '.1e'):>8} "
            f"{g('output_bits', '.0f'):>5} {g('seconds', '.1f'):>6}")


def plot(records: list, path: Path) -> None:
    """Parameter error and max relative error against the answers' bits, per victim."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for victim in sorted({r["victim"] for r in records}):
        rs = [r for r in records if r["victim"] == victim and "output_bits" in r
              and not r["regime"].startswith(("ill:", "mp"))]
        rs.sort(key=lambda r: r["output_bits"])
        bits = [r["output_bits"] for r in rs]
        for ax, key in zip(axes, ("param_error_loose", "max_rel_error")):
            vals = [max(r[key], 1e-18) for r in rs]
            ax.semilogy(bits, vals, "o-", label=victim)
    for ax, title in zip(axes, ("parameter error (loose |cos| matching)",
                                "max relative output error")):
        ax.set_xlabel("bits of precision in the answers")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small victims only")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/precision.json, "
                    "or precision_combined.json with --combined")
    ap.add_argument("--samples", type=int, default=None, help="Gaussian test inputs")
    ap.add_argument("--combined", action="store_true",
                    help="only the generator's combined ill-conditioned victims (issue 15)")
    args = ap.parse_args()
    samples = args.samples or (20_000 if args.quick else 100_000)
    if args.out is None:
        args.out = "benchmarks/results/precision" + ("_combined" if args.combined else "") + \
            ".json"
    if args.combined:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        records = []
        print(HEADER + f" {'err/range':>9} {'bound':>8} {'resol.':>8} {'rank2':>8}", flush=True)
        for rec in combined_runs(args.quick, samples):
            records.append(rec)
            print(row(rec) + "".join(
                f" {rec[k]:>8.1e}" if isinstance(rec.get(k), float) else "        -"
                for k in ("error_over_range", "output_error", "resolution", "rank_two")),
                  flush=True)
            out.write_text(json.dumps(records, indent=1, default=float))
        print(f"wrote {out}")
        return
    d = victims.digits(28)
    images = None if d is None else d[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    print(HEADER, flush=True)
    for rec in all_runs(args.quick, samples, images):
        records.append(rec)
        print(row(rec), flush=True)
        out.write_text(json.dumps(records, indent=1, default=float))   # kept as it goes
    plot(records, out.with_name("precision_bits.png"))
    print(f"wrote {out} and {out.with_name('precision_bits.png')}")


if __name__ == "__main__":
    main()
