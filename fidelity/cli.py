"""Command line: ``fidelity demo | extract | evaluate | serve | bench``.

``fidelity extract`` exits 0 when the extraction is verified, 3 when the budget or the server's
quota ran out (the partial network is saved when there is one; rerun with the same
``--journal`` and a new budget or key to finish), 4 when the checks still disagreed at the end,
and 1 on an error (unreachable or failing victim, label-only victim, foreign journal).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, TextIO

import numpy as np

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL, EXIT_UNVERIFIED = 0, 1, 3, 4


class Progress:
    """A one-line progress bar on a stream: queries spent / budget, rows paid, neurons found.

    ``oracle`` and ``engine`` are the callbacks for :class:`~fidelity.Oracle` (after each
    answered chunk) and :func:`~fidelity.extract` (after each stage). On a terminal the line is
    redrawn at most every ``interval`` seconds; elsewhere one line is written per stage.
    """

    def __init__(self, stream: TextIO, enabled: bool = True, interval: float = 0.1,
                 width: int = 24):
        self.stream, self.enabled, self.interval, self.width = stream, enabled, interval, width
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.queries = self.paid = self.replayed = self.neurons = 0
        self.budget: Optional[int] = None
        self.stage = "start"
        self._last = 0.0
        self._drawn = False

    def oracle(self, info: dict) -> None:
        self.queries, self.paid = info["queries"], info["paid"]
        self.replayed, self.budget = info.get("replayed", 0), info.get("budget")
        self._draw(force=False)

    def engine(self, info: dict) -> None:
        self.queries, self.budget = info.get("queries", self.queries), info.get("budget")
        self.neurons, self.stage = info.get("neurons", self.neurons), info.get("stage", "")
        self._draw(force=True)

    def line(self) -> str:
        if self.budget:
            done = min(1.0, self.queries / self.budget)
            fill = int(round(done * self.width))
            head = (f"[{'#' * fill}{'-' * (self.width - fill)}] "
                    f"{self.queries:,}/{self.budget:,} queries")
        else:
            head = f"{self.queries:,} queries"
        tail = f" (replayed {self.replayed:,})" if self.replayed else ""
        return f"{head}, paid {self.paid:,}{tail}, {self.neurons} neurons [{self.stage}]"

    def _draw(self, force: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if force or now - self._last >= self.interval:
                self.stream.write("\r" + self.line().ljust(100)[:100])
                self.stream.flush()
                self._last, self._drawn = now, True
        elif force:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


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
    print(f"answers' precision: {result.noise.bits:.0f} bits; estimated parameter error "
          f"(largest over units): {result.error_estimate:.1e}")
    print(f"black-box output error: {result.output_error:.1e} of the range over "
          f"{result.output_error_points} check answers; a unit moving the outputs by less than "
          f"{result.resolution:.1e} of it could go unseen")
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


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _extract(args) -> int:
    from . import Oracle, QueryBudgetExceeded, ReLUNetwork, extract
    from .errors import FidelityError
    from .http import HTTPOracle

    bar = Progress(sys.stderr, enabled=not args.quiet)
    result, code, error = None, EXIT_OK, None
    oracle = None
    try:
        if _is_url(args.source):
            key = args.api_key or os.environ.get("FIDELITY_API_KEY")
            oracle = HTTPOracle(args.source, api_key=key, batch_size=args.batch_size,
                                budget=args.budget, progress=bar.oracle)
        else:
            oracle = Oracle(ReLUNetwork.load(args.source), budget=args.budget,
                            progress=bar.oracle)
        result = extract(oracle, seed=args.seed, throw=False, progress=bar.engine,
                         journal=args.journal)
        code = EXIT_OK if result.status == "ok" else EXIT_UNVERIFIED
    except QueryBudgetExceeded as exc:
        result, code, error = exc.result, EXIT_PARTIAL, str(exc)
    except (FidelityError, OSError, ValueError) as exc:
        code, error = EXIT_ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        bar.close()
        if isinstance(oracle, HTTPOracle):
            oracle.close()
    if result is None:
        print(f"fidelity extract: {error}", file=sys.stderr)
        return code
    saved = None
    if result.network is not None:
        result.network.save(args.out)
        saved = args.out
    widths = None if result.network is None else list(result.network.sizes[1:-1])
    summary = dict(status=result.status, hidden=result.hidden_size, widths=widths,
                   queries=result.queries,
                   paid=oracle.paid, replayed=oracle.replayed, seconds=round(result.seconds, 3),
                   out=saved, journal=args.journal,
                   noise_bits=None if result.noise is None else round(result.noise.bits, 1),
                   error_estimate=float(f"{result.error_estimate:.3g}"),
                   output_error=float(f"{result.output_error:.3g}"),
                   output_error_points=result.output_error_points,
                   resolution=float(f"{result.resolution:.3g}"))
    if error:
        summary["stopped"] = error
    print(json.dumps(summary) if args.json else
          " ".join(f"{k}={v}" for k, v in summary.items() if k != "stopped"))
    if error and not args.json:
        print(f"fidelity extract: stopped: {error}"
              + ("; rerun with the same --journal to resume" if args.journal else ""),
              file=sys.stderr)
    return code


def _evaluate(args) -> int:
    from . import ReLUNetwork, evaluate
    data = None
    if args.data is not None:
        import numpy as np
        data = np.load(args.data)
        if not isinstance(data, np.ndarray):        # an .npz: its first array
            data = data[data.files[0]]
    rep = evaluate(ReLUNetwork.load(args.victim), ReLUNetwork.load(args.stolen),
                   num_samples=args.samples, seed=args.seed, data=data, eps=args.eps,
                   bounds=tuple(args.bounds) if args.bounds else None)
    print(json.dumps(rep.as_dict(), indent=2))
    return 0


def _serve(args) -> int:
    from . import ReLUNetwork
    try:
        from .server import parse_output_mode, serve
    except ImportError as exc:
        print(f"fidelity serve needs the serve extra (pip install 'fidelity[serve]'): {exc}",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        parse_output_mode(args.output)
    except ValueError as exc:
        print(f"fidelity serve: {exc}", file=sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    if args.log_file:
        handler = logging.FileHandler(args.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logging.getLogger("fidelity.server").addHandler(handler)
    keys = list(args.api_key or [])
    env_key = os.environ.get("FIDELITY_API_KEY")
    if not keys and env_key:
        keys = [env_key]
    victim = ReLUNetwork.load(args.victim)
    print(f"serving {args.victim} ({'-'.join(map(str, victim.sizes))}, output {args.output}) "
          f"on http://{args.host}:{args.port}/predict; "
          f"{len(keys)} key(s), quota {args.quota or 'none'}", file=sys.stderr)
    serve(victim, host=args.host, port=args.port, api_keys=keys, quota=args.quota,
          output=args.output, max_rows=args.max_rows, max_bytes=args.max_bytes, rate=args.rate)
    return EXIT_OK


def _bench_script() -> Optional[Path]:
    """``benchmarks/core.py`` of the working directory or of the checkout this module is in."""
    candidates = [Path.cwd() / "benchmarks" / "core.py",
                  Path(__file__).resolve().parent.parent / "benchmarks" / "core.py"]
    return next((p for p in candidates if p.is_file()), None)


def _bench(args) -> int:
    script = _bench_script()
    if script is None:
        print("fidelity bench: benchmarks/core.py not found; the benchmark ships with the source "
              "checkout, not the installed package: run it from a clone of the repository",
              file=sys.stderr)
        return EXIT_ERROR
    rest = [a for a in args.args if a != "--"]
    return subprocess.call([sys.executable, str(script), *rest])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fidelity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="extract the embedded digits victim and report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=100_000)
    p.set_defaults(fn=_demo)

    p = sub.add_parser("extract", help="extract a victim (.npz file or http(s) /predict URL)")
    p.add_argument("source", help="victim .npz, or the http(s) URL of a /predict endpoint")
    p.add_argument("--out", required=True, help="where to save the extracted network (.npz)")
    p.add_argument("--budget", type=int, default=None, help="most rows the engine may use")
    p.add_argument("--journal", default=None,
                   help="durable query journal: answers are saved before use, a rerun replays")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=None, help="API key (default: $FIDELITY_API_KEY)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per HTTP request")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_extract)

    p = sub.add_parser("evaluate", help="compare a stolen network with its victim")
    p.add_argument("victim")
    p.add_argument("stolen")
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="natural inputs (.npy, or .npz: its first array): "
                   "adds agreement off the data, at boundary points, and adversarial transfer")
    p.add_argument("--eps", type=float, default=None,
                   help="L-inf radius of the adversarial examples (default: 0.1 x data range)")
    p.add_argument("--bounds", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="box the adversarial examples stay in, e.g. 0 1 for images")
    p.set_defaults(fn=_evaluate)

    p = sub.add_parser("serve", help="serve a victim .npz as an HTTP JSON prediction API")
    p.add_argument("victim")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="append",
                   help="accepted key (repeat for several; default $FIDELITY_API_KEY or none)")
    p.add_argument("--quota", type=int, default=None, help="rows answered per key")
    p.add_argument("--output", default="logits", help="logits | float32 | round:N | label | softmax | softmax:N "
                   "(probabilities, rounded to N decimals)")
    p.add_argument("--max-rows", type=int, default=4096, help="most rows per request")
    p.add_argument("--max-bytes", type=int, default=64 << 20, help="largest request body")
    p.add_argument("--rate", type=float, default=None, help="requests per second per key")
    p.add_argument("--log-file", default=None, help="also append the request log here")
    p.set_defaults(fn=_serve)

    p = sub.add_parser("bench", help="run benchmarks/core.py (source checkout only)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed on, e.g. --quick")
    p.set_defaults(fn=_bench)

    args = parser.parse_args(argv)
    np.set_printoptions(precision=4)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
