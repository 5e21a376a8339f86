"""Command line: ``fidelity demo``, ``fidelity extract``, ``fidelity evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _demo(args) -> int:
    from . import Oracle, evaluate, extract
    from .victims import demo_victim, digits_784

    victim = demo_victim()
    print(f"victim: embedded digits classifier {'-'.join(map(str, victim.sizes))} "
          f"({victim.num_params} parameters)")
    oracle = Oracle(victim)
    t0 = time.perf_counter()
    result = extract(oracle, seed=args.seed)
    seconds = time.perf_counter() - t0
    print(f"status: {result.status}; hidden units found: {result.hidden_size}")
    print(f"queries: {result.queries} ({result.queries / victim.num_params:.3f} per parameter)")
    print(f"time: {seconds:.2f} s (JIT compilation included)")
    report = evaluate(victim, result.network, num_samples=args.samples, seed=args.seed)
    print(f"Gaussian inputs ({args.samples}): fidelity {report.fidelity:.6f}, "
          f"max relative error {report.max_rel_error:.2e}")
    print(f"normalised parameter error: {report.param_error:.2e}")
    images = digits_784()
    if images is not None:
        rep = evaluate(victim, result.network, inputs=images)
        print(f"digits images ({images.shape[0]}): fidelity {rep.fidelity:.6f}, "
              f"max relative error {rep.max_rel_error:.2e}")
    else:
        print("digits images: install scikit-learn (pip install 'fidelity[digits]') to check them")
    return 0 if result.status == "ok" and report.fidelity == 1.0 else 1


def _extract(args) -> int:
    from . import Oracle, ReLUNetwork, extract
    victim = ReLUNetwork.load(args.victim)
    oracle = Oracle(victim, budget=args.budget)
    result = extract(oracle, seed=args.seed)
    result.network.save(args.out)
    summary = dict(status=result.status, hidden=result.hidden_size, queries=result.queries,
                   seconds=round(result.seconds, 3), out=args.out)
    print(json.dumps(summary) if args.json else
          " ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def _evaluate(args) -> int:
    from . import ReLUNetwork, evaluate
    rep = evaluate(ReLUNetwork.load(args.victim), ReLUNetwork.load(args.stolen),
                   num_samples=args.samples, seed=args.seed)
    print(json.dumps(rep.as_dict(), indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fidelity", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="extract the embedded digits victim and report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=100_000)
    p.set_defaults(fn=_demo)
    p = sub.add_parser("extract", help="extract a victim saved as .npz")
    p.add_argument("victim")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_extract)
    p = sub.add_parser("evaluate", help="compare a stolen network with its victim")
    p.add_argument("victim")
    p.add_argument("stolen")
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_evaluate)
    args = parser.parse_args(argv)
    np.set_printoptions(precision=4)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
