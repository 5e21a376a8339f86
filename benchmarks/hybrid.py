"""Issues 5 and 16: learning, direct recovery and the hybrid against queries, on four measures.

    python benchmarks/hybrid.py [--quick] [--out benchmarks/results/hybrid.json]

Victims trained on sklearn's digits: 64-32-10 on the 8x8 images and 784-64-10 on the images
upsampled to 28x28 (pixels in [0, 1]). The 1,797 images are split once (seed 0): a pool of 1,000
that the attacks may query, and 797 held out. Every network is scored (``fidelity.metrics.measure``)
on four measures:

- ``data``: agreement (same class) on the 797 held-out images;
- ``gauss``: agreement and max relative logit error on 20,000 standard Gaussian inputs;
- ``boundary``: agreement and max relative error on 1,000 points next to the victim's decision
  boundaries (500 pairs of held-out images with different victim classes, the segment between
  them bisected 6 times on the victim's class: both ends of the last bracket);
- ``transfer``: L-inf PGD (10 steps, eps = 0.1, pixels kept in [0, 1]) crafted on the copy from
  500 held-out images: the share that fool the victim, beside the share crafted on the victim
  itself.

Methods: ``learn`` random / pool / active / semi on a grid of budgets (width = the victim's);
direct recovery (``extract``) in full and stopped at 25/50/75% of its need, each stopped run
finished by the hybrid (``finetune``) with a grid of extra budgets (target width: the kinks of the
recovery's first search line, which the attacker sees); learning again at the hybrid-50% totals
(same total budget); a victim that answers rounded to 3 decimals, on which direct recovery ends
``unverified``, and its hybrid (8x8 victim); and *twins*: the victim's architecture trained again
on the victim's own training data with other seeds, the ceiling of learning-based extraction with
the right data. Ground truth (the victim's weights) is used only by the metrics.
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
from fidelity.metrics import measure

HERE = Path(__file__).parent
EPS = 0.1          # L-inf radius of the adversarial examples, pixels in [0, 1]
STRATEGIES = ("random", "pool", "active", "semi")
NAN = float("nan")


def victim_list():
    x8, y8 = victims.digits(None)
    x28 = victims.upsample(x8 * 16.0)
    return [("digits8 64-32-10", x8, y8, 32), ("digits 784-64-10", x28, y8, 64)]


def scores(victim, net, held_out, args):
    keys = ("fidelity", "fidelity_gauss", "gauss_rel", "boundary", "boundary_rel",
            "transfer", "transfer_victim", "transfer_self")
    if net is None:
        return dict.fromkeys(keys, NAN)
    m = measure(victim, net, held_out, eps=EPS, bounds=(0.0, 1.0), gauss_samples=args.gauss,
                boundary_pairs=500, transfer_inputs=500, seed=1)
    vals = (m.data.agreement, m.gauss.agreement, m.gauss.max_rel_error, m.boundary.agreement,
            m.boundary.max_rel_error, m.transfer.copy_rate, m.transfer.victim_rate,
            m.transfer.copy_self_rate)
    return dict(zip(keys, vals))


def rounded(net, decimals):
    """The victim answering float64 logits rounded to ``decimals`` decimals."""
    return lambda x: np.round(np.asarray(net(np.asarray(x, np.float64)), np.float64), decimals)


def run_victim(name, x, y, hidden, args, first):
    t0 = time.perf_counter()
    victim = victims.train_classifier(x, y, [hidden], seed=0, steps=1500)
    perm = np.random.default_rng(0).permutation(x.shape[0])
    pool, held_out = x[perm[:1000]], x[perm[1000:]]
    recs = []

    def add(method, net, queries, status, seconds, **extra):
        rec = dict(victim=name, method=method, queries=int(queries), status=str(status),
                   seconds=float(seconds), **extra, **scores(victim, net, held_out, args))
        recs.append(rec)
        print(f"{name[:9]:9s} {method:16s} q={rec['queries']:7d} {rec['status'][:10]:10s} "
              f"data={rec['fidelity']:.4f} gauss={rec['fidelity_gauss']:.4f} "
              f"({rec['gauss_rel']:.1e}) edge={rec['boundary']:.4f} ({rec['boundary_rel']:.1e}) "
              f"adv={rec['transfer']:.3f}/{rec['transfer_victim']:.3f} t={seconds:.1f}s",
              flush=True)

    def add_result(method, res, **extra):
        add(method, res.network, res.queries, res.status, res.seconds,
            hidden=res.hidden_size, **extra)

    full = F.extract(F.Oracle(victim), seed=0)
    add_result("direct", full, fraction=1.0)
    totals = []
    for frac in args.fractions:
        kinks = []
        try:
            F.extract(F.Oracle(victim, budget=int(frac * full.queries)), seed=0,
                      progress=lambda info: kinks.append(info.get("kinks")))
            raise RuntimeError("the stopped recovery did not stop")
        except F.QueryBudgetExceeded as stop:
            partial = stop.result
        add_result("direct", partial, fraction=frac)
        width = next((k for k in kinks if k is not None), None) or 2 * hidden
        for extra in args.extra:
            res = F.finetune(partial, F.Oracle(victim), budget=extra, pool=pool, hidden=width,
                             seed=0)
            add_result(f"hybrid {int(100 * frac)}%", res, fraction=frac, extra=extra,
                       target_width=width)
            if frac == 0.5:
                totals.append(res.queries)
    for strategy in STRATEGIES:
        budgets = list(args.budgets)
        if first and strategy in ("random", "pool") and not args.quick:
            budgets.append(10 * full.queries)          # learning at 10x the direct need
        for budget in budgets:
            res = F.learn(F.Oracle(victim), hidden=hidden, budget=budget, pool=pool,
                          strategy=strategy, seed=0)
            add_result(f"learn {strategy}", res, budget=budget)
        if not args.quick:                             # the same totals as the hybrid 50%
            for budget in totals:
                res = F.learn(F.Oracle(victim), hidden=hidden, budget=budget, pool=pool,
                              strategy=strategy, seed=0)
                add_result(f"learn {strategy}", res, budget=budget, matched="hybrid 50%")
    for seed in args.twins:
        t1 = time.perf_counter()
        twin = victims.train_classifier(x, y, [hidden], seed=seed, steps=1500)
        add("twin", twin, 0, "retrained", time.perf_counter() - t1, seed=seed)
    if first and not args.quick:
        answers = rounded(victim, 3)
        noisy = F.extract(F.Oracle(answers, input_dim=x.shape[1]), seed=0, throw=False)
        add_result("direct rounded3", noisy)
        for extra in (300, 1000):
            res = F.finetune(noisy, F.Oracle(answers, input_dim=x.shape[1]), budget=extra,
                             pool=pool, hidden=noisy.hidden_size + 8, seed=0)
            add_result("hybrid rounded3", res, extra=extra)
            res = F.learn(F.Oracle(answers, input_dim=x.shape[1]), hidden=hidden,
                          budget=res.queries, pool=pool, strategy="active", seed=0)
            add_result("learn active rounded3", res, budget=res.queries)
    print(f"{name}: {time.perf_counter() - t0:.0f} s in all", flush=True)
    return recs, dict(victim=name, params=victim.num_params, direct_queries=full.queries)


def _of(recs, victim, prefix):
    return [r for r in recs if r["victim"] == victim and r["method"].startswith(prefix)]


def first_reaching(recs, victim, prefix, level, key="fidelity"):
    q = [r["queries"] for r in _of(recs, victim, prefix) if r[key] >= level]
    return min(q) if q else None


def best(recs, victim, prefix, key):
    rs = [r for r in _of(recs, victim, prefix) if np.isfinite(r[key])]
    if not rs:
        return None
    r = max(rs, key=lambda r: r[key])
    return dict(value=r[key], queries=r["queries"], method=r["method"])


def summary(recs, info):
    out = []
    for v in info:
        name = v["victim"]
        s = dict(v)
        direct = next(r for r in _of(recs, name, "direct") if r.get("fraction") == 1.0)
        s["direct"] = {k: direct[k] for k in ("queries", "fidelity", "fidelity_gauss", "gauss_rel",
                                              "boundary", "boundary_rel", "transfer",
                                              "transfer_victim")}
        s["direct_transfer_gap"] = direct["transfer"] - direct["transfer_victim"]
        for key in ("fidelity", "fidelity_gauss", "boundary"):
            s[f"learn_first_0.99_{key}"] = first_reaching(recs, name, "learn ", 0.99, key)
            s[f"learn_best_{key}"] = best(recs, name, "learn ", key)
            s[f"hybrid50_first_0.99_{key}"] = first_reaching(recs, name, "hybrid 50%", 0.99, key)
        # the hybrid from a 50% stop against learning alone at the same total budget
        rows = []
        for h in _of(recs, name, "hybrid 50%"):
            same = [r for r in _of(recs, name, "learn ") if r["queries"] == h["queries"]]
            if not same:
                continue
            bg = max(same, key=lambda r: r["fidelity_gauss"])
            bt = max(same, key=lambda r: r["transfer"])
            rows.append(dict(queries=h["queries"], hybrid_gauss=h["fidelity_gauss"],
                             learn_best_gauss=bg["fidelity_gauss"], learn_best_gauss_by=bg["method"],
                             hybrid_transfer=h["transfer"], learn_best_transfer=bt["transfer"],
                             learn_best_transfer_by=bt["method"],
                             victim_transfer=h["transfer_victim"]))
        s["hybrid50_vs_learn"] = rows
        semi = {r["budget"]: r["fidelity"] for r in _of(recs, name, "learn semi")}
        pool = {r["budget"]: r["fidelity"] for r in _of(recs, name, "learn pool")}
        s["semi_minus_pool"] = {b: semi[b] - pool[b] for b in semi if b in pool}
        twins = _of(recs, name, "twin")
        if twins:
            s["twins"] = {k: dict(mean=float(np.mean([t[k] for t in twins])),
                                  min=float(np.min([t[k] for t in twins])),
                                  max=float(np.max([t[k] for t in twins])))
                          for k in ("fidelity", "fidelity_gauss", "boundary", "transfer")}
        out.append(s)
    return out


def plot(recs, info, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("fidelity", "held-out digits (797)", 0.5 / 797),
              ("fidelity_gauss", "Gaussian inputs (off the data)", 1e-5),
              ("boundary", "points next to the victim's boundaries", 0.5 / 1000),
              ("transfer", "adversarial transfer (eps 0.1)", None))
    fig, axes = plt.subplots(len(panels), len(info), figsize=(6.5 * len(info), 15),
                             squeeze=False)
    styles = {"learn random": ("tab:gray", "o-"), "learn pool": ("tab:blue", "o-"),
              "learn active": ("tab:green", "o-"), "learn semi": ("tab:cyan", "o-"),
              "hybrid 25%": ("tab:orange", "s--"), "hybrid 50%": ("tab:red", "s--"),
              "hybrid 75%": ("tab:purple", "s--"), "hybrid rounded3": ("tab:brown", "^--"),
              "direct": ("black", "D")}
    for col, v in enumerate(info):
        name = v["victim"]
        twins = _of(recs, name, "twin")
        for row, (key, title, floor) in enumerate(panels):
            ax = axes[row][col]
            for method, (color, style) in styles.items():
                pts = sorted((r["queries"], r[key]) for r in recs
                             if r["victim"] == name and r["method"] == method
                             and np.isfinite(r[key]) and r["queries"] > 0)
                if not pts:
                    continue
                q, val = zip(*pts)
                y = val if floor is None else np.maximum(1.0 - np.array(val), floor)
                ax.plot(q, y, style, color=color, label=method, ms=5)
            if twins:
                t = np.mean([r[key] for r in twins])
                ax.axhline(t if floor is None else max(1.0 - t, floor), color="tab:olive",
                           lw=1.2, ls="-.", label=f"twins (retrained, {len(twins)} seeds)")
            ax.axvline(v["direct_queries"], color="black", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_xlabel("queries (log)")
            if floor is None:
                victim_rate = next(r["transfer_victim"] for r in recs if r["victim"] == name)
                ax.axhline(victim_rate, color="black", lw=0.8,
                           label="crafted on the victim itself")
                ax.set_ylabel("share of the victim fooled")
            else:
                ax.axhline(floor, color="gray", lw=0.5)
                ax.set_yscale("log")
                ax.set_ylabel("1 - agreement (bottom line: all agree)")
            ax.set_title(f"{name}: {title}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][col].legend(fontsize=7)
        axes[3][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="8x8 victim only, a coarser grid")
    ap.add_argument("--gauss", type=int, default=20_000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.fractions = (0.25, 0.5, 0.75)
    args.budgets = (100, 250, 1000, 3000) if args.quick else (100, 250, 1000, 3000, 10000)
    args.extra = (100, 300, 1000) if args.quick else (100, 300, 1000, 3000)
    args.twins = (1, 2) if args.quick else (1, 2, 3, 4)
    out = Path(args.out or HERE / "results" / ("quick" if args.quick else "") / "hybrid.json")
    todo = victim_list()[:1] if args.quick else victim_list()
    records, info = [], []
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        for i, (name, x, y, hidden) in enumerate(todo):
            recs, v = run_victim(name, x, y, hidden, args, first=i == 0)
            records += recs
            info.append(v)
    summ = summary(records, info)
    for s in summ:
        print(json.dumps(s))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(summary=summ, records=records, eps=EPS,
                                   seconds=time.perf_counter() - t0), indent=1))
    plot(records, info, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
