"""Issue-5 benchmark: fidelity against queries for learning, direct recovery and the hybrid.

    python benchmarks/hybrid.py [--quick] [--out benchmarks/results/hybrid.json]

Victims trained on sklearn's digits: 64-32-10 on the 8x8 images and 784-64-10 on the images
upsampled to 28x28. The 1,797 images are split once (seed 0): a pool of 1,000 that the attacks
may query, and 797 held out on which fidelity is measured (plus 20,000 standard Gaussian inputs,
off the data). Ground truth (the victim's weights) is used only by the metrics.

Methods: ``learn`` with the strategies random / pool / active on a log grid of budgets (hidden
width = the victim's); direct recovery (``extract``) in full and stopped at 25/50/75% of its
full need (the partial networks are scored too); the hybrid, ``finetune`` of each stopped
recovery with a log grid of extra budgets. The hybrid's target width is the number of kinks the
recovery's first search line found (reported by its progress callback: attacker-side knowledge).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import fidelity as F
from fidelity import victims

HERE = Path(__file__).parent


def victim_list():
    x8, y8 = victims.digits(None)
    x28 = victims.upsample(x8 * 16.0)
    return [("digits8 64-32-10", x8, y8, 32), ("digits 784-64-10", x28, y8, 64)]


def scores(victim, net, held_out, gauss):
    if net is None:
        return dict(fidelity=float("nan"), fidelity_gauss=float("nan"))
    return dict(fidelity=F.evaluate(victim, net, inputs=held_out).fidelity,
                fidelity_gauss=F.evaluate(victim, net, inputs=gauss).fidelity)


def run_victim(name, x, y, hidden, args):
    t0 = time.perf_counter()
    victim = victims.train_classifier(x, y, [hidden], seed=0, steps=1500)
    perm = np.random.default_rng(0).permutation(x.shape[0])
    pool, held_out = x[perm[:1000]], x[perm[1000:]]
    gauss = np.random.default_rng(1).normal(size=(args.gauss, x.shape[1]))
    recs = []

    def add(method, res, **extra):
        rec = dict(victim=name, method=method, queries=res.queries, hidden=res.hidden_size,
                   status=res.status, seconds=res.seconds, **extra,
                   **scores(victim, res.network, held_out, gauss))
        recs.append(rec)
        print(f"{name:18s} {method:14s} q={rec['queries']:7d} h={rec['hidden']:4d} "
              f"fid={rec['fidelity']:.5f} gauss={rec['fidelity_gauss']:.5f} "
              f"t={rec['seconds']:.1f}s", flush=True)

    full = F.extract(F.Oracle(victim), seed=0)
    add("direct", full, fraction=1.0)
    for frac in args.fractions:
        kinks = []
        try:
            F.extract(F.Oracle(victim, budget=int(frac * full.queries)), seed=0,
                      progress=lambda info: kinks.append(info.get("kinks")))
            raise RuntimeError("the stopped recovery did not stop")
        except F.QueryBudgetExceeded as stop:
            partial = stop.result
        add("direct", partial, fraction=frac)
        width = next((k for k in kinks if k is not None), None) or 2 * hidden
        for extra in args.extra:
            res = F.finetune(partial, F.Oracle(victim), budget=extra, pool=pool, hidden=width,
                             seed=0)
            add(f"hybrid {int(100 * frac)}%", res, fraction=frac, extra=extra,
                target_width=width)
    for strategy in ("random", "pool", "active"):
        for budget in args.budgets:
            res = F.learn(F.Oracle(victim), hidden=hidden, budget=budget, pool=pool,
                          strategy=strategy, seed=0)
            add(f"learn {strategy}", res, budget=budget)
    print(f"{name}: {time.perf_counter() - t0:.0f} s in all", flush=True)
    return recs, dict(victim=name, params=victim.num_params, direct_queries=full.queries)


def first_reaching(recs, victim, prefix, level, key="fidelity"):
    q = [r["queries"] for r in recs if r["victim"] == victim and r["method"].startswith(prefix)
         and r[key] >= level]
    return min(q) if q else None


def summary(recs, info):
    out = []
    for v in info:
        name = v["victim"]
        s = dict(v)
        for level in (0.99, 0.995, 1.0):
            s[f"learn_{level}"] = first_reaching(recs, name, "learn", level)
            s[f"hybrid50_{level}"] = first_reaching(recs, name, "hybrid 50%", level)
            s[f"hybrid_{level}"] = first_reaching(recs, name, "hybrid", level)
        for level in (0.99, 1.0):
            s[f"learn_gauss_{level}"] = first_reaching(recs, name, "learn", level, "fidelity_gauss")
        act = {r["budget"]: r["fidelity"] for r in recs
               if r["victim"] == name and r["method"] == "learn active"}
        pool = {r["budget"]: r["fidelity"] for r in recs
                if r["victim"] == name and r["method"] == "learn pool"}
        s["active_minus_pool"] = {b: act[b] - pool[b] for b in act}
        out.append(s)
    return out


def plot(recs, info, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(info), figsize=(6 * len(info), 8), squeeze=False)
    styles = {"learn random": ("tab:gray", "o-"), "learn pool": ("tab:blue", "o-"),
              "learn active": ("tab:green", "o-"), "hybrid 25%": ("tab:orange", "s--"),
              "hybrid 50%": ("tab:red", "s--"), "hybrid 75%": ("tab:purple", "s--"),
              "direct": ("black", "D")}
    for col, v in enumerate(info):
        name = v["victim"]
        for row, key, title in ((0, "fidelity", "held-out digits (797)"),
                                (1, "fidelity_gauss", "Gaussian inputs")):
            ax = axes[row][col]
            n = 797 if row == 0 else None
            floor = 0.5 / n if n else 1e-5
            for method, (color, style) in styles.items():
                pts = sorted((r["queries"], r[key]) for r in recs
                             if r["victim"] == name and r["method"] == method
                             and np.isfinite(r[key]))
                if not pts:
                    continue
                q, fid = zip(*pts)
                err = np.maximum(1.0 - np.array(fid), floor)
                ax.plot(q, err, style, color=color, label=method, ms=5)
            ax.axvline(v["direct_queries"], color="black", lw=0.6, ls=":")
            ax.axhline(floor, color="gray", lw=0.5)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("queries (log)")
            ax.set_ylabel("1 - fidelity (bottom line: all agree)")
            ax.set_title(f"{name}: {title}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="8x8 victim only, a coarser grid")
    ap.add_argument("--gauss", type=int, default=20_000)
    ap.add_argument("--out", default=str(HERE / "results" / "hybrid.json"))
    args = ap.parse_args()
    args.fractions = (0.25, 0.5, 0.75)
    args.budgets = (100, 300, 1000, 3000) if args.quick else (100, 300, 1000, 3000, 10000)
    args.extra = (100, 300, 1000) if args.quick else (100, 300, 1000, 3000)
    todo = victim_list()[:1] if args.quick else victim_list()
    records, info = [], []
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        for name, x, y, hidden in todo:
            recs, v = run_victim(name, x, y, hidden, args)
            records += recs
            info.append(v)
    summ = summary(records, info)
    for s in summ:
        print(json.dumps(s))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(summary=summ, records=records,
                                   seconds=time.perf_counter() - t0), indent=1))
    plot(records, info, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
