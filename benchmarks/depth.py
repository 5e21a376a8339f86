"""Issue-14 benchmark: deep victims (2-8 hidden layers) recovered from queries alone.

    python benchmarks/depth.py [--quick] [--timeout 300] [--out benchmarks/results/depth.json]
    python benchmarks/depth.py --plot benchmarks/results/depth.json   # table and plot only
    python benchmarks/depth.py --seeds 6    # Carlini et al.'s shapes over seeds 0-5

Per victim: status, layers recovered, queries (total, per parameter, per layer), fidelity on
Gaussian inputs (and digits images for trained victims), max relative output error,
layer-matched parameter error, time and peak memory. Ground truth is read only by the metrics,
after the extraction. Published figures (Carlini et al. 2020, their code on a 2-core machine,
from the issue) are stored beside ours.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
import traceback
from pathlib import Path
from typing import Optional

import jax
import numpy as np

import fidelity as F
from fidelity import victims
from sweep import _TimeUp, rss_mb

CARLINI = {   # queries, queries/param, weight error, seconds (their code, 2-core machine)
    "10-10-10-1": (53_000, 229, 3.2e-12, 34),
    "10-20-20-1": (311_000, 470, 4.4e-12, 581),
    "40-20-10-10-1": (323_000, 281, 2.3e-11, 135),
    "80-40-20-1": (505_000, 124, 4.8e-10, 131),
}


# the issue bounds this shape's time (5 minutes): its runs get that long whatever --timeout says
LONGER = {"784-64-32-10": 420.0}


def victim_list(quick: bool):
    out = []
    seeds = [0] if quick else [0, 1]
    for arch in CARLINI:
        sizes = [int(s) for s in arch.split("-")]
        for s in seeds:
            out.append((f"random {arch} s{s}", F.ReLUNetwork.random(s, sizes), None))
    out.append(("random 784-64-32-10 s0", F.ReLUNetwork.random(0, [784, 64, 32, 10]), None))
    if quick:
        return out
    x8, y8 = victims.digits(None)
    x28, y28 = victims.digits(28)
    out.append(("digits 784-64-32-10", victims.train_classifier(x28, y28, [64, 32], seed=0,
                                                                steps=1500), x28))
    out.append(("digits8 64-32-16-10", victims.train_classifier(x8, y8, [32, 16], seed=0,
                                                                steps=1500), x8))
    out.append(("random 100-50-50-50-10 s0", F.ReLUNetwork.random(0, [100, 50, 50, 50, 10]),
                None))
    out.append(("random 784-16x8-1 s0", F.ReLUNetwork.random(0, [784] + [16] * 8 + [1]), None))
    out.append(("random 3072-256x8-10 s0 (CIFAR shape)",
                F.ReLUNetwork.random(0, [3072] + [256] * 8 + [10]), None))
    return out


GRACE = 120.0   # seconds an extraction stopped by the time cap gets to return what it has


class stop_at:
    """Context manager that, after ``seconds``, sets the oracle's budget to the rows it has
    used: the extraction stops at its next batch and returns what it has (the hidden layers
    recovered so far, in ``QueryBudgetExceeded.result``). :class:`_TimeUp` follows
    :data:`GRACE` seconds later if no batch comes."""

    def __init__(self, oracle, seconds: float):
        self.oracle, self.seconds = oracle, seconds

    def __enter__(self):
        def ring(signum, frame):
            if self.oracle.budget is None or self.oracle.budget > self.oracle.queries:
                self.oracle.budget = self.oracle.queries
                signal.setitimer(signal.ITIMER_REAL, GRACE)
            else:
                raise _TimeUp()
        self._old = signal.signal(signal.SIGALRM, ring)
        signal.setitimer(signal.ITIMER_REAL, float(self.seconds))
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, self._old)
        return False


def _so_far(rec: dict, layers, queries: int) -> None:
    """How far a run that did not finish got: the hidden layers recovered (widths, queries)
    and the queries spent outside them (the one-layer attempt that comes first, the layer
    that stopped it)."""
    rec.update(layers_done=[i.width for i in layers], layer_queries=[i.queries for i in layers],
               layer_lines=[i.lines for i in layers], layer_kinks=[i.kinks for i in layers],
               queries_outside=queries - sum(i.queries for i in layers))


def run(name, victim, images, samples, timeout):
    oracle = F.Oracle(victim)
    arch = "-".join(map(str, victim.sizes))
    rec = dict(victim=name, arch=arch, params=victim.num_params, depth=len(victim.sizes) - 2)
    t0 = time.perf_counter()
    try:
        with stop_at(oracle, timeout):
            res = F.extract(oracle, seed=0, throw=False)
    except (_TimeUp, F.QueryBudgetExceeded) as exc:
        rec.update(status="timeout", queries=oracle.queries, timeout=timeout,
                   queries_per_param=oracle.queries / victim.num_params,
                   seconds=time.perf_counter() - t0, peak_rss_mb=rss_mb())
        part = getattr(exc, "result", None)
        if part is not None:
            _so_far(rec, part.layers, oracle.queries)
            rec.update(notes=list(part.notes), stage_queries=dict(part.stage_queries))
        return rec
    except F.UnsupportedArchitecture as exc:
        rec.update(status="refused", reason=str(exc), queries=oracle.queries,
                   queries_per_param=oracle.queries / victim.num_params,
                   seconds=time.perf_counter() - t0, peak_rss_mb=rss_mb())
        _so_far(rec, exc.layers, oracle.queries)
        return rec
    seconds = time.perf_counter() - t0
    rep = F.evaluate(victim, res.network, num_samples=samples)
    rec.update(status=str(res.status), widths=list(res.network.sizes[1:-1]),
               queries=res.queries, queries_per_param=res.queries / victim.num_params,
               layer_queries=[i.queries for i in res.layers],
               layer_lines=[i.lines for i in res.layers],
               layer_kinks=[i.kinks for i in res.layers],
               stage_queries=res.stage_queries, seconds=seconds,
               fidelity_gauss=rep.fidelity, max_rel_error=rep.max_rel_error,
               param_error=rep.param_error, matched=rep.matched, missing=rep.missing,
               extra=rep.extra, check_error=res.check_error, notes=list(res.notes),
               peak_rss_mb=rss_mb())
    if images is not None:
        ri = F.evaluate(victim, res.network, inputs=images)
        rec.update(fidelity_digits=ri.fidelity, max_rel_error_digits=ri.max_rel_error)
    pub = CARLINI.get(arch)
    if pub:
        rec.update(carlini_queries=pub[0], carlini_error=pub[2], carlini_seconds=pub[3],
                   fewer_queries=pub[0] / res.queries)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--only", default=None, help="run the victims whose name contains this")
    ap.add_argument("--out", default="benchmarks/results/depth.json")
    ap.add_argument("--plot", default=None, help="only redraw the table and plot of this JSON")
    ap.add_argument("--seeds", type=int, default=0,
                    help="instead: Carlini et al.'s four architectures over seeds 0..N-1 "
                         "(results/depth_seeds.json): how often each is exact, at what cost")
    args = ap.parse_args()
    if args.seeds:
        jax.config.update("jax_enable_x64", True)
        seeds_sweep(args.seeds, min(args.samples, 20_000), args.timeout, args.only)
        return
    if args.plot:
        records = json.loads(Path(args.plot).read_text())
        if Path(args.plot).stem.endswith("seeds"):     # a --seeds sweep
            print(seeds_table(records))
            return
        print(table(records))
        plot(records, Path(args.plot).with_suffix(".png"))
        return
    jax.config.update("jax_enable_x64", True)
    records = []
    for name, victim, images in victim_list(args.quick):
        if args.only and args.only not in name:
            continue
        try:
            arch = "-".join(map(str, victim.sizes))
            rec = run(name, victim, images, args.samples, max(args.timeout, LONGER.get(arch, 0)))
        except Exception as exc:  # a benchmark row says what went wrong, the sweep goes on
            rec = dict(victim=name, status="error", reason=f"{type(exc).__name__}: {exc}",
                       trace=traceback.format_exc(limit=3))
        records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k not in ("notes", "trace",
                                                                   "stage_queries")}),
              flush=True)
    if args.only and Path(args.out).exists():     # the other rows of the file are kept
        records = merged(json.loads(Path(args.out).read_text()), records)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records, indent=1, default=float))
    print(table(records))
    plot(records, Path(args.out).with_suffix(".png"))


def merged(old: list, new: list) -> list:
    """``old`` rows with those of the same victim replaced by ``new``'s (new ones appended)."""
    fresh = {r["victim"]: r for r in new}
    out = [fresh.pop(r["victim"], r) for r in old]
    return out + [r for r in new if r["victim"] in fresh]


def seeds_sweep(n: int, samples: int, timeout: float, only: Optional[str] = None,
                out: str = "benchmarks/results/depth_seeds.json") -> None:
    """Each of Carlini et al.'s architectures over ``n`` seeds: one row per run, then per
    architecture how many ended ``ok`` (exact: fidelity 1.0), and their queries. ``only``:
    the architectures whose name contains it, their rows replaced in ``out``."""
    kept = json.loads(Path(out).read_text()) if only and Path(out).exists() else []
    records = []
    for arch in CARLINI:
        if only and only not in arch:
            continue
        sizes = [int(s) for s in arch.split("-")]
        for s in range(n):
            rec = run(f"random {arch} s{s}", F.ReLUNetwork.random(s, sizes), None, samples,
                      timeout)
            records.append(rec)
            print(f"{rec['victim']:26s} {rec['status']:10s} q={rec.get('queries')} "
                  f"fewer={rec.get('fewer_queries', float('nan')):.1f} "
                  f"par={rec.get('param_error', float('nan')):.1e} "
                  f"{rec.get('reason', '')[:90]}", flush=True)
            Path(out).write_text(json.dumps(merged(kept, records), indent=1, default=float))
    print(seeds_table(merged(kept, records)))


def seeds_table(records) -> str:
    """Per architecture of a seeds sweep: how many runs ended exact, and their queries."""
    lines = ["| architecture | seeds | ok (exact) | unverified | refused | queries of ok runs "
             "(min / median / max) | fewer than Carlini et al. (at the max / median) |",
             "|---|---|---|---|---|---|---|"]
    for arch in CARLINI:
        rows = [r for r in records if r["arch"] == arch]
        ok = [r for r in rows if r["status"] == "ok" and r.get("fidelity_gauss") == 1.0]
        q = sorted(r["queries"] for r in ok)
        med = float(np.median(q)) if q else 0.0
        count = {k: sum(r["status"] == k for r in rows) for k in ("unverified", "refused")}
        lines.append(f"| {arch} | {len(rows)} | {len(ok)} | {count['unverified']} | "
                     f"{count['refused']} | "
                     + (f"{q[0]:,} / {med:,.0f} / {q[-1]:,} | {CARLINI[arch][0] / q[-1]:.1f}x "
                        f"/ {CARLINI[arch][0] / med:.1f}x |" if ok else "- | - |"))
    return "\n".join(lines)


def table(records) -> str:
    lines = ["| victim | status | widths | queries | q/param | vs Carlini | fidelity | "
             "max rel err | param err | time (s) |", "|" + "---|" * 10]
    for r in records:
        fewer = (f"{r['fewer_queries']:.1f}x fewer" if "fewer_queries" in r
                 and r["status"] == "ok" else "")       # only a finished, verified run counts
        lines.append(
            f"| {r['victim']} | {r['status']} | {_widths(r)} | {r.get('queries', '')} |"
            f" {r.get('queries_per_param', float('nan')):.1f} | {fewer} |"
            f" {r.get('fidelity_gauss', float('nan')):.4f} |"
            f" {r.get('max_rel_error', float('nan')):.1e} |"
            f" {r.get('param_error', float('nan')):.1e} | {r.get('seconds', float('nan')):.0f} |")
    return "\n".join(lines)


def _widths(r: dict) -> str:
    """The widths recovered; for a run that did not finish, the layers it recovered first, the
    queries each took and those spent outside them."""
    if "widths" in r:
        return str(r["widths"])
    if not r.get("layers_done"):
        return ""
    per = " + ".join(f"{q:,}" for q in r["layer_queries"])
    return f"{r['layers_done']} first ({per} queries; {r['queries_outside']:,} outside them)"


def plot(records, path: Path) -> None:
    """Queries per parameter, ours (exact runs) against Carlini et al.'s code, per victim."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r.get("status") == "ok"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["victim"] for r in done]
    ax.barh(names, [r["queries_per_param"] for r in done], color="tab:blue",
            label="fidelity (exact, status ok)")
    pub = [(r["victim"], CARLINI[r["arch"]][1]) for r in done if r.get("arch") in CARLINI]
    if pub:
        ax.scatter([q for _, q in pub], [n for n, _ in pub], color="tab:red", marker="x",
                   zorder=3, label="Carlini et al. 2020 (their code, 2 cores)")
    ax.set_xscale("log")
    ax.set_xlabel("queries per parameter")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
