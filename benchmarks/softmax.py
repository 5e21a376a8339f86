"""Issue-15 benchmark: victims that answer softmax probabilities instead of logits.

    PYTHONPATH=$PWD python benchmarks/softmax.py [--quick] [--out benchmarks/results/softmax.json]

Per victim: the logit extraction (for its queries) and the extraction from probabilities (in
process; for the demo also over HTTP with `fidelity serve --output softmax`'s app; for the
8x8 digits classifier also with probabilities rounded to a few decimals). The JSON is
rewritten after each row. Errors are measured against the victim with its output layer centred over
classes (what probabilities determine). Ground truth is read only by the metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import fidelity as F
from fidelity import probabilities as P
from fidelity import victims


def victim_list(quick: bool):
    x28, y28 = victims.digits(28)
    x8, y8 = victims.digits(None)
    yield "random 784-32-10 s0", F.ReLUNetwork.random(0, [784, 32, 10]), x28
    yield "digits 784-32-10 (demo)", victims.demo_victim(), x28
    yield "digits8 64-16-10", victims.train_classifier(x8, y8, [16], seed=0, steps=1500), x8
    if not quick:
        yield "random 784-32-10 s1", F.ReLUNetwork.random(1, [784, 32, 10]), x28
        yield "digits 784-64-10", victims.train_classifier(x28, y28, [64], seed=0,
                                                           steps=1500), x28
        yield "random 784-128-10 s0", F.ReLUNetwork.random(0, [784, 128, 10]), x28
        # other training seeds: s2's logits spread fast (lines cut to half-length 115)
        for h, s in ((64, 2), (128, 1)):
            yield (f"digits 784-{h}-10 s{s}",
                   victims.train_classifier(x28, y28, [h], seed=s, steps=1500), x28)


def measure(name, victim, images, result, logit_queries, seconds, samples, how):
    centred = P.centre(victim)
    rec = dict(victim=name, answers=how, params=victim.num_params, status=result.status,
               hidden=result.hidden_size, true_hidden=victim.sizes[1], queries=result.queries,
               queries_per_param=result.queries / victim.num_params,
               logit_queries=logit_queries, ratio_to_logits=result.queries / logit_queries,
               seconds=seconds, notes=list(result.notes))
    if result.network is None:
        return rec
    rep = F.evaluate(centred, result.network, num_samples=samples)
    x = np.random.default_rng(1).normal(size=(samples, victim.input_dim))
    p, ph = P.softmax(victim(x)), P.softmax(result.network(x))
    rec.update(param_error=rep.param_error, missing=rep.missing, extra=rep.extra,
               max_prob_error=float(np.abs(p - ph).max()),
               label_fidelity_gauss=float((p.argmax(1) == ph.argmax(1)).mean()),
               max_rel_error_centred=rep.max_rel_error)
    if images is not None:
        p, ph = P.softmax(victim(images)), P.softmax(result.network(images))
        rec.update(max_prob_error_digits=float(np.abs(p - ph).max()),
                   label_fidelity_digits=float((p.argmax(1) == ph.argmax(1)).mean()))
    return rec


def extract_timed(oracle):
    t0 = time.perf_counter()
    try:
        res = F.extract(oracle, seed=0, throw=False)
    except Exception as exc:       # a refusal (or a crash) is a row of the table too
        return None, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
    return res, time.perf_counter() - t0, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--decimals", default="12,10,8,6")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "softmax.json"))
    ap.add_argument("--only", default=None,
                    help="rerun the victims whose name starts with this; keep the other rows")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    records = []
    if args.only and Path(args.out).exists():
        records = [r for r in json.loads(Path(args.out).read_text())
                   if not r["victim"].startswith(args.only)]

    def report(rec):
        records.append(rec)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(records, indent=1, default=float))
        print(f"{rec['victim']:26s} {rec['answers']:14s} {rec['status']:10s} "
              f"{rec.get('hidden', 0)}/{rec.get('true_hidden', 0)} "
              f"q/p={rec.get('queries_per_param', float('nan')):.2f} "
              f"x{rec.get('ratio_to_logits', float('nan')):.2f} "
              f"perr={rec.get('param_error', float('nan')):.1e} "
              f"prob={rec.get('max_prob_error', float('nan')):.1e} "
              f"fid={rec.get('label_fidelity_gauss', float('nan')):.5f}/"
              f"{rec.get('label_fidelity_digits', float('nan')):.5f} "
              f"{rec.get('seconds', 0):.1f}s {rec.get('error', '')}", flush=True)

    for name, victim, images in victim_list(args.quick):
        if args.only and not name.startswith(args.only):
            continue
        logits = F.extract(F.Oracle(victim), seed=0, throw=False)
        d = victim.input_dim
        res, sec, _ = extract_timed(F.Oracle(P.softmax_victim(victim), input_dim=d))
        report(measure(name, victim, images, res, logits.queries, sec, args.samples,
                       "softmax"))
        if name.startswith("digits 784-32-10"):         # over HTTP, as `fidelity serve`
            from fidelity.server import BackgroundServer, create_app
            app = create_app(victim, output="softmax")
            with BackgroundServer(app) as srv, F.HTTPOracle(srv.url + "/predict") as oracle:
                res, sec, _ = extract_timed(oracle)
            rec = measure(name, victim, images, res, logits.queries, sec, args.samples,
                          "softmax (HTTP)")
            rec["billed_rows"] = app.state.ledger.usage()["rows"]
            report(rec)
        if name.startswith("digits8"):
            for n in map(int, args.decimals.split(",")):
                res, sec, err = extract_timed(F.Oracle(P.softmax_victim(victim, n),
                                                       input_dim=d))
                if res is None:
                    report(dict(victim=name, answers=f"softmax:{n}", status="refused",
                                error=err, seconds=sec))
                    continue
                report(measure(name, victim, images, res, logits.queries, sec, args.samples,
                               f"softmax:{n}"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
