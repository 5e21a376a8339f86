"""The mpmath rung: extract in float64, refine in mpmath, report the normalised parameter error.

Usage: python benchmarks/precision_mp.py [--dps 50] [--sizes 10-8-1 64-16-10 784-32-1]
"""

from __future__ import annotations

import argparse
import time

import jax
import mpmath

import fidelity as F
from fidelity import mp

CASES = {"10-8-1": 0, "64-16-10": 1, "784-32-1": 0}   # victim seed per architecture


def run(sizes: str, seed: int, dps: int) -> dict:
    victim = F.ReLUNetwork.random(seed, [int(s) for s in sizes.split("-")])
    oracle = F.Oracle(victim, precision="mp")
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        result = F.extract(oracle, precision="float64")
    t64 = time.perf_counter() - t0
    err64 = F.evaluate(victim, result.network, num_samples=2000).param_error
    t0 = time.perf_counter()
    refined = mp.refine(result, oracle, dps=dps)
    tmp = time.perf_counter() - t0
    report = F.evaluate(victim, refined.network, num_samples=2000)
    return dict(sizes=sizes, params=victim.num_params, f64_queries=result.queries,
                f64_seconds=t64, f64_param_error=err64, mp_rows=refined.stage_queries["mp"],
                mp_seconds=tmp, param_error=report.param_error,
                max_error_estimate=max(n.error_estimate for n in refined.neurons),
                queries=refined.queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dps", type=int, default=50)
    ap.add_argument("--sizes", nargs="*", default=list(CASES))
    args = ap.parse_args()
    dps_before = mpmath.mp.dps
    print(f"{'victim':>10} {'params':>7} {'f64 q':>7} {'f64 s':>6} {'f64 err':>8} "
          f"{'mp rows':>7} {'mp s':>6} {'mp err':>9} {'estimate':>9} {'queries':>8}")
    for sizes in args.sizes:
        r = run(sizes, CASES.get(sizes, 0), args.dps)
        print(f"{r['sizes']:>10} {r['params']:>7} {r['f64_queries']:>7} {r['f64_seconds']:>6.1f} "
              f"{r['f64_param_error']:>8.1e} {r['mp_rows']:>7} {r['mp_seconds']:>6.1f} "
              f"{r['param_error']:>9.1e} {r['max_error_estimate']:>9.1e} {r['queries']:>8}")
    assert mpmath.mp.dps == dps_before


if __name__ == "__main__":
    main()
