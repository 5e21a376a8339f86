"""Issue-2 benchmark: per victim, queries, fidelity, errors and time of `fidelity.extract`.

    python benchmarks/core.py [--quick] [--out benchmarks/results/core.json]

Ground truth (the victim's weights) is used only by the metrics, after the extraction.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import fidelity as F
from fidelity import metrics, victims


def victim_list(quick: bool):
    out = [("random 10-8-1 s0", F.ReLUNetwork.random(0, [10, 8, 1]), None)]
    x8, y8 = victims.digits(None)
    x28, y28 = victims.digits(28)
    out.append(("digits8 64-16-10", victims.train_classifier(x8, y8, [16], seed=0, steps=1500), x8))
    out.append(("digits 784-32-10 (demo)", victims.demo_victim(), x28))
    seeds = [0] if quick else [0, 1]
    for sizes in ([784, 32, 1], [784, 64, 1], [784, 128, 1], [784, 32, 10], [784, 128, 10]):
        if quick and sizes[1] == 64:
            continue
        for s in seeds:
            out.append((f"random {'-'.join(map(str, sizes))} s{s}", F.ReLUNetwork.random(s, sizes), x28))
    if not quick:
        for h in (64, 128):
            out.append((f"digits 784-{h}-10", victims.train_classifier(x28, y28, [h], seed=0,
                                                                        steps=1500), x28))
    return out


def run(name, victim, images, samples):
    oracle = F.Oracle(victim)
    t0 = time.perf_counter()
    res = F.extract(oracle, seed=0, throw=False)
    seconds = time.perf_counter() - t0
    rep = F.evaluate(victim, res.network, num_samples=samples)
    rec = dict(victim=name, params=victim.num_params, hidden=res.hidden_size,
               true_hidden=victim.sizes[1], status=res.status, queries=res.queries,
               queries_per_param=res.queries / victim.num_params, stage_queries=res.stage_queries,
               lines=res.lines, seconds=seconds, fidelity_gauss=rep.fidelity,
               max_rel_error=rep.max_rel_error, param_error=rep.param_error,
               missing=rep.missing, extra=rep.extra, negligible=rep.negligible,
               error_estimate=res.error_estimate, output_error=res.output_error,
               output_error_points=res.output_error_points, resolution=res.resolution,
               rank_two=res.rank_two)
    rec.update(metrics.estimate_ratios(victim, res))   # per unit (issue 15)
    if images is not None:
        ri = F.evaluate(victim, res.network, inputs=images)
        rec.update(fidelity_digits=ri.fidelity, max_rel_error_digits=ri.max_rel_error)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "core.json"))
    args = ap.parse_args()
    records = []
    with jax.enable_x64(True):
        for name, victim, images in victim_list(args.quick):
            rec = run(name, victim, images, args.samples)
            records.append(rec)
            print(f"{name:28s} P={rec['params']:6d} h={rec['hidden']:3d}/{rec['true_hidden']:3d} "
                  f"{rec['status']:10s} q/P={rec['queries_per_param']:.3f} "
                  f"fid={rec['fidelity_gauss']:.5f}/{rec.get('fidelity_digits', float('nan')):.5f} "
                  f"rel={rec['max_rel_error']:.1e} par={rec['param_error']:.1e} "
                  f"est={rec['error_estimate']:.1e} out={rec['output_error']:.1e} "
                  f"unit est/act={rec.get('unit_ratio_min', np.nan):.2f}-"
                  f"{rec.get('unit_ratio_max', np.nan):.1f} "
                  f"t={rec['seconds']:.2f}s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
