"""Issue-3 benchmark: the size sweep, side by side with the 2020 paper and with IBM's ART.

    python benchmarks/sweep.py                 # the full sweep (CPU), into benchmarks/results/
    python benchmarks/sweep.py --quick         # small victims only, into benchmarks/results/quick/
    python benchmarks/sweep.py --backend gpu   # on a GPU, into benchmarks/results/gpu/
    python benchmarks/sweep.py --victims random-784-32-10-s0,digits-784-64-10-s0 --no-art

Every victim runs in fresh subprocesses (one for this engine, one for ART), so that each peak
memory figure is that run's own and a time cap can stop a run cleanly. Both methods query the
victim through the same counting :class:`fidelity.Oracle`; ground truth (the victim's weights)
is read only by the metrics, after the extraction.

Timing: ``seconds`` is the wall time of a warm extraction. For this engine the victim is extracted
twice in the same process with the same seed (same queries); the first run pays the JIT
compilation, the second does not, and ``compile_seconds`` is their difference. ART has no JIT:
it queries one row at a time, so its oracle wraps a plain numpy forward of the same victim
(a JAX call per row would cost it ~0.2 ms of dispatch), and its ``compile_seconds`` is 0.

Peak memory: ``peak_mb`` is the worker process's high-water resident set
(``getrusage(RUSAGE_SELF).ru_maxrss``, taken right after the extraction, before the metrics);
it includes the Python and JAX runtime, whose share is ``peak_mb - peak_delta_mb`` (the
high-water mark just before the first extraction). On a GPU ``device_peak_mb`` is the device's
peak bytes in use.

Outputs (``--out``, default ``benchmarks/results``; ``--name``, default ``sweep``): ``NAME.json``
(one record per method x victim, the paper's rows included), ``NAME.md`` (tables) and
``NAME_queries.png`` / ``NAME_time.png`` (see ``benchmarks/plots.py``, which can redraw them from
the JSON).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"

# Training recipe of the digits victims (part of their cache key).
TRAIN_STEPS = 1500

# The paper's rows (Jagielski et al., "High Accuracy and High Fidelity Extraction of Neural
# Networks", USENIX Security 2020: 2^17.2, 2^18.2 and 2^19.2 queries), as quoted in issue 3.
PAPER_ROWS = (
    (25_000, 32, 150_000, 1.0),
    (50_000, 64, 300_000, 1.0),
    (100_000, 128, 600_000, 0.9998),
)

PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "auto": None}


# ------------------------------------------------------------------------------ victims
@dataclass(frozen=True)
class VictimSpec:
    """One victim of the sweep.

    ``kind`` is ``'random'`` (He-normal, :meth:`fidelity.ReLUNetwork.random`) or ``'digits'``
    (trained with optax on sklearn's digits at the input size: 8x8 for ``d = 64``, upsampled
    28x28 for ``d = 784``, 32x32 times 3 channels for ``d = 3072``; one output means an
    even/odd classifier whose single output is the logit difference).
    """

    kind: str
    sizes: tuple
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("random", "digits"):
            raise ValueError(f"victim kind must be 'random' or 'digits', got {self.kind!r}")
        if len(self.sizes) != 3 or min(self.sizes) < 1:
            raise ValueError(f"one-hidden-layer sizes (d, h, k) expected, got {self.sizes}")
        if self.kind == "digits" and self.sizes[0] not in (64, 784, 3072):
            raise ValueError("digits victims take d = 64, 784 or 3072 inputs")
        if self.kind == "digits" and self.sizes[2] not in (1, 10):
            raise ValueError("digits victims have 1 (even/odd) or 10 outputs")

    @property
    def key(self) -> str:
        return f"{self.kind}-{'-'.join(map(str, self.sizes))}-s{self.seed}"

    @classmethod
    def from_key(cls, key: str) -> "VictimSpec":
        parts = key.split("-")
        if len(parts) != 5 or not parts[4].startswith("s"):
            raise ValueError(f"victim key like 'random-784-32-10-s0' expected, got {key!r}")
        return cls(parts[0], tuple(int(p) for p in parts[1:4]), int(parts[4][1:]))

    @property
    def d(self) -> int:
        return self.sizes[0]

    @property
    def h(self) -> int:
        return self.sizes[1]

    @property
    def k(self) -> int:
        return self.sizes[2]

    @property
    def params(self) -> int:
        d, h, k = self.sizes
        return h * (d + 1) + k * (h + 1)


def sweep_specs(quick: bool) -> list[VictimSpec]:
    """The issue-3 sweep (``quick``: three small victims for smoke runs)."""
    if quick:
        return [VictimSpec("random", (784, 32, 1)), VictimSpec("random", (784, 32, 10)),
                VictimSpec("digits", (64, 16, 10))]
    specs = [VictimSpec(kind, (784, h, k)) for k in (1, 10) for h in (32, 64, 128)
             for kind in ("random", "digits")]
    specs += [VictimSpec(kind, (784, h, 10)) for h in (256, 512, 1024)
              for kind in ("random", "digits")]
    specs.append(VictimSpec("random", (3072, 256, 10)))
    return specs


def digit_images(d: int) -> Optional[np.ndarray]:
    """sklearn's 1,797 digits at input size ``d`` (``None`` for other sizes or without sklearn)."""
    from fidelity import victims

    if d == 64:
        data = victims.digits(None)
        return None if data is None else data[0]
    if d == 784:
        return victims.digits_784()
    if d == 3072:
        data = victims.digits(32)
        return None if data is None else np.tile(data[0], (1, 3))
    return None


def _digit_labels() -> Optional[np.ndarray]:
    from fidelity import victims

    data = victims.digits(None)
    return None if data is None else data[1]


def build_victim(spec: VictimSpec, cache: Path = CACHE):
    """The victim network; trained ones are cached under ``cache`` by spec and recipe."""
    import fidelity as F
    from fidelity import victims

    if spec.kind == "random":
        return F.ReLUNetwork.random(spec.seed, list(spec.sizes))
    path = Path(cache) / f"{spec.key}-steps{TRAIN_STEPS}.npz"
    if path.exists():
        return F.ReLUNetwork.load(path)
    x, y = digit_images(spec.d), _digit_labels()
    if x is None or y is None:
        raise RuntimeError("digits victims need scikit-learn (pip install -e '.[bench]')")
    if spec.k == 1:
        # two classes (even, odd); the logit difference is a one-output network with the same
        # decision, still one hidden layer
        two = victims.train_classifier(x, y % 2, [spec.h], seed=spec.seed, steps=TRAIN_STEPS)
        w2, b2 = two.weights[1], two.biases[1]
        net = F.ReLUNetwork([two.weights[0], w2[1:] - w2[:1]], [two.biases[0], b2[1:] - b2[:1]])
    else:
        net = victims.train_classifier(x, y, [spec.h], seed=spec.seed, steps=TRAIN_STEPS)
    path.parent.mkdir(parents=True, exist_ok=True)
    net.save(path)
    return net


def victim_accuracy(spec: VictimSpec, victim) -> Optional[float]:
    """Accuracy of a trained victim on the digits (``None`` for random victims)."""
    if spec.kind != "digits":
        return None
    x, y = digit_images(spec.d), _digit_labels()
    out = np.asarray(victim(x))
    pred = (out[:, 0] > 0).astype(int) if spec.k == 1 else out.argmax(1)
    return float(np.mean(pred == (y % 2 if spec.k == 1 else y)))


# ------------------------------------------------------------------------------ measuring
class _TimeUp(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` swallows it."""


class time_cap:
    """Context manager raising :class:`_TimeUp` after ``seconds`` (``None``: no cap)."""

    def __init__(self, seconds: Optional[float]):
        self.seconds = seconds

    def __enter__(self):
        if self.seconds:
            def ring(signum, frame):
                raise _TimeUp()
            self._old = signal.signal(signal.SIGALRM, ring)
            signal.setitimer(signal.ITIMER_REAL, float(self.seconds))
        return self

    def __exit__(self, *exc):
        if self.seconds:
            signal.setitimer(signal.ITIMER_REAL, 0.0)
            signal.signal(signal.SIGALRM, self._old)
        return False


def rss_mb() -> float:
    """High-water resident set of this process in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_peak_mb() -> Optional[float]:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # not every backend reports memory
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def measure(victim, network, images: Optional[np.ndarray], *, samples: int, seed: int,
            chunk: int = 10_000) -> dict:
    """Fidelity and errors of ``network`` on ``samples`` Gaussian inputs and on ``images``.

    Uses :func:`fidelity.evaluate` on chunks (so that 100,000 x 3072 inputs fit in memory) and
    combines them: fidelity is the overall fraction, ``max_rel_error`` the largest error over
    the largest victim output.
    """
    import fidelity as F

    def over(batches):
        agree, n, err, scale, rep = 0.0, 0, 0.0, 0.0, None
        for x in batches:
            rep = F.evaluate(victim, network, inputs=x)
            agree += rep.fidelity * x.shape[0]
            n += x.shape[0]
            err = max(err, rep.max_abs_error)
            scale = max(scale, float(np.abs(np.asarray(victim(x))).max()))
        return agree / n, (err / scale if scale > 0 else err), rep

    rng = np.random.default_rng(seed)
    sizes = [min(chunk, samples - i) for i in range(0, samples, chunk)]
    fid, rel, rep = over(rng.normal(size=(m, victim.input_dim)) for m in sizes)
    out = dict(fidelity=fid, max_rel_error=rel, param_error=rep.param_error,
               matched=rep.matched, missing=rep.missing, extra=rep.extra,
               negligible=rep.negligible, fidelity_digits=None, max_rel_error_digits=None)
    if images is not None:
        fid_i, rel_i, _ = over([images])
        out.update(fidelity_digits=fid_i, max_rel_error_digits=rel_i)
    return out


def _base_record(method: str, spec: VictimSpec, victim) -> dict:
    import jax

    dev = jax.devices()[0]
    d, h, k = spec.sizes
    return dict(method=method, victim=spec.key, kind=spec.kind, input_dim=d, true_hidden=h,
                outputs=k, params=victim.num_params, hidden=None, queries=None,
                queries_per_param=None, floor_queries=(victim.num_params - h) / k,
                fidelity=None, fidelity_digits=None, max_rel_error=None, param_error=None,
                seconds=None, compile_seconds=None, peak_mb=None, peak_delta_mb=None,
                device_peak_mb=None, backend=jax.default_backend(), device=dev.device_kind,
                status=None, victim_accuracy=victim_accuracy(spec, victim))


def run_fidelity(spec: VictimSpec, *, timeout: Optional[float], samples: int, seed: int,
                 repeat: bool = True) -> dict:
    """Extracts ``spec``'s victim with this engine (twice when ``repeat``); one record."""
    import jax

    import fidelity as F

    victim = build_victim(spec)
    images = digit_images(spec.d)
    rec = _base_record("fidelity", spec, victim)
    base = rss_mb()
    runs, oracle = [], None
    try:
        with jax.enable_x64(True), time_cap(timeout):
            for _ in range(2 if repeat else 1):
                oracle = F.Oracle(victim)
                t0 = time.perf_counter()
                res = F.extract(oracle, seed=seed, throw=False)
                runs.append((time.perf_counter() - t0, res))
    except _TimeUp:
        rec.update(status="timeout", seconds=timeout, timeout_s=timeout,
                   queries=None if oracle is None else oracle.queries)
        if runs:  # the cold run finished; the warm one did not
            rec.update(queries=runs[0][1].queries, cold_seconds=runs[0][0])
        return rec
    except Exception as exc:  # an engine failure is a result of the sweep, recorded as such
        msg = " ".join(str(exc).split())[:300]
        rec.update(status=f"error: {type(exc).__name__}: {msg}")
        return rec
    rec.update(peak_mb=rss_mb(), peak_delta_mb=rss_mb() - base, device_peak_mb=device_peak_mb())
    cold, res = runs[0]
    warm, res2 = runs[-1]
    rec.update(seconds=warm, cold_seconds=cold,
               compile_seconds=max(0.0, cold - warm) if repeat else None,
               hidden=res.hidden_size, queries=res.queries,
               queries_per_param=res.queries / victim.num_params,
               stage_queries=res.stage_queries, lines=res.lines, engine_status=res.status,
               notes=list(res.notes), error_estimate=res.error_estimate,
               output_error=res.output_error, output_error_points=res.output_error_points,
               resolution=res.resolution)
    if repeat and res2.queries != res.queries:
        rec["notes"].append(f"warm run spent {res2.queries} queries, cold run {res.queries}")
    if res.network is None:
        rec.update(status=f"error: extraction returned no network (status {res.status})")
        return rec
    with jax.enable_x64(True):
        rec.update(measure(victim, res.network, images, samples=samples, seed=seed + 1))
        rec.update(F.metrics.estimate_ratios(victim, res))   # per unit (issue 15)
    rec["status"] = "ok" if res.status == "ok" else f"error: extraction status '{res.status}'"
    return rec


def numpy_forward(net):
    """The victim as a plain numpy function (float64): cheap for one-row queries.

    ART asks one row at a time, where a JAX call costs ~0.2 ms of dispatch against ~0.01 ms of
    numpy arithmetic; ART gets this forward so that its time is its own, not JAX's.
    """
    w1, b1 = np.asarray(net.weights[0], np.float64), np.asarray(net.biases[0], np.float64)
    w2, b2 = np.asarray(net.weights[1], np.float64), np.asarray(net.biases[1], np.float64)

    def forward(x):
        return np.maximum(x @ w1.T + b1, 0.0) @ w2.T + b2

    return forward


def _art_classifier(oracle, d: int, k: int):
    """Wraps the counting oracle as the ART classifier FunctionallyEquivalentExtraction needs.

    ART's BlackBoxClassifierNeuralNetwork stores answers as float32, which would cripple its
    finite differences (its own example runs Keras in float64), so ``predict`` is overridden to
    hand the oracle's float64 answers through. Rows holding NaN or inf (ART's interpolation can
    produce them) are answered NaN without reaching the victim, and are not counted. ART's
    classifiers need two classes or more: a one-output victim ``f`` is shown as the two-class
    logits ``[f, -f]`` (one oracle row per ART row all the same).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ART warns at import about missing optional frameworks
        from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    classes = max(k, 2)

    class OracleClassifier(BlackBoxClassifierNeuralNetwork):
        nonfinite_rows = 0

        def predict(self, x, batch_size: int = 128, **kwargs):
            x = np.asarray(x, np.float64).reshape(len(x), -1)
            out = np.full((x.shape[0], classes), np.nan)
            ok = np.isfinite(x).all(axis=1)
            if ok.any():
                y = oracle(x[ok])
                out[ok] = np.concatenate([y, -y], axis=1) if k == 1 else y
            self.nonfinite_rows += int((~ok).sum())
            return out

    return OracleClassifier(oracle, input_shape=(d,), nb_classes=classes)


def run_art(spec: VictimSpec, *, timeout: Optional[float], samples: int, seed: int,
            art_samples: int) -> dict:
    """Extracts ``spec``'s victim with ART's FunctionallyEquivalentExtraction; one record."""
    import jax

    import fidelity as F

    victim = build_victim(spec)
    images = digit_images(spec.d)
    rec = _base_record("art", spec, victim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import art
        from art.attacks.extraction import FunctionallyEquivalentExtraction
    rec.update(art_version=art.__version__, victim_forward="numpy", compile_seconds=0.0,
               notes=[])
    if spec.k == 1:
        rec["notes"].append("one-output victim shown to ART as two-class logits [f, -f]; "
                            "extracted output = (o0 - o1) / 2")
    x_fit = np.random.default_rng(seed + 2).normal(size=(art_samples, spec.d))
    oracle = F.Oracle(numpy_forward(victim), input_dim=spec.d, output_dim=spec.k)
    base = rss_mb()
    np.random.seed(seed)  # ART draws its lines and starting points from numpy's global RNG
    t0 = time.perf_counter()
    fee = None
    try:
        with time_cap(timeout), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            clf = _art_classifier(oracle, spec.d, spec.k)
            fee = FunctionallyEquivalentExtraction(clf, num_neurons=spec.h)
            fee.extract(x_fit)
    except _TimeUp:
        rec.update(status="timeout", seconds=time.perf_counter() - t0, queries=oracle.queries,
                   timeout_s=timeout)
        return rec
    except Exception as exc:  # ART's own failures are results of the comparison
        msg = " ".join(str(exc).split())[:200]
        rec.update(status=f"error: {type(exc).__name__}: {msg}",
                   seconds=time.perf_counter() - t0, queries=oracle.queries)
        return rec
    finally:
        if fee is not None:
            rec["nonfinite_rows"] = fee.estimator.nonfinite_rows
    rec.update(seconds=time.perf_counter() - t0, peak_mb=rss_mb(), peak_delta_mb=rss_mb() - base,
               queries=oracle.queries, queries_per_param=oracle.queries / victim.num_params,
               hidden=spec.h)
    w2, b2 = fee.w_1.T, fee.b_1[:, 0]
    if spec.k == 1:
        w2, b2 = (w2[:1] - w2[1:]) / 2, (b2[:1] - b2[1:]) / 2
    net = F.ReLUNetwork([fee.w_0.T.astype(np.float64), w2.astype(np.float64)],
                        [fee.b_0[:, 0].astype(np.float64), b2.astype(np.float64)])
    try:
        with jax.enable_x64(True), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            rec.update(measure(victim, net, images, samples=samples, seed=seed + 1))
    except Exception as exc:  # e.g. NaN weights
        rec["notes"].append(f"metrics failed: {type(exc).__name__}: {exc}")
    rec["status"] = "ok"
    return rec


def paper_records() -> list[dict]:
    return [dict(method="paper", victim=f"paper MNIST 784-{h} (~{p // 1000}k)", kind="paper",
                 input_dim=784, true_hidden=h, outputs=None, params=p, hidden=h, queries=q,
                 queries_per_param=q / p, floor_queries=None, fidelity=fid,
                 fidelity_digits=None, max_rel_error=None, param_error=None, seconds=None,
                 compile_seconds=None, peak_mb=None, backend=None, device=None, status="ok",
                 source="Jagielski et al. 2020, as quoted in issue 3")
            for p, h, q, fid in PAPER_ROWS]


# ------------------------------------------------------------------------------ orchestration
def _clean(obj):
    """JSON-safe: NaN and inf become None (``missing``/``extra`` say why param_error is absent)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def _worker_env(backend: str) -> dict:
    env = dict(os.environ)
    platform = PLATFORMS[backend]
    if platform is None:
        env.pop("JAX_PLATFORMS", None)
    else:
        env["JAX_PLATFORMS"] = platform
    return env


def _stub_record(method: str, spec: VictimSpec, args, status: str, **extra) -> dict:
    """A record for a run that left none of its own (skipped, killed, crashed)."""
    rec = dict(method=method, victim=spec.key, kind=spec.kind, input_dim=spec.d,
               true_hidden=spec.h, outputs=spec.k, params=spec.params, hidden=None,
               queries=None, queries_per_param=None,
               floor_queries=(spec.params - spec.h) / spec.k, fidelity=None,
               fidelity_digits=None, max_rel_error=None, param_error=None, seconds=None,
               compile_seconds=None, peak_mb=None, device=None, status=status,
               backend=None if args.backend == "auto" else args.backend)
    rec.update(extra)
    return rec


def _run_worker(mode: str, spec: VictimSpec, args, hard_timeout: Optional[float]) -> dict:
    """Runs one worker subprocess; returns its record, or an error/timeout record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "record.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode,
               "--victims", spec.key, "--record-out", str(out), "--samples", str(args.samples),
               "--seed", str(args.seed), "--art-samples", str(args.art_samples),
               "--backend", args.backend]
        cap = args.art_timeout if mode == "art" else args.timeout
        if cap:
            cmd += ["--art-timeout" if mode == "art" else "--timeout", str(cap)]
        if args.no_repeat:
            cmd.append("--no-repeat")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=_worker_env(args.backend), capture_output=True,
                                  text=True, timeout=hard_timeout)
        except subprocess.TimeoutExpired:
            return _stub_record(mode, spec, args, "timeout", seconds=time.perf_counter() - t0,
                                notes=["the worker passed its hard time limit and was killed"])
        if proc.returncode == 0 and out.exists():
            return json.loads(out.read_text())
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return _stub_record(mode, spec, args,
                            f"error: worker exited {proc.returncode}: {tail[0][:200]}")


def _line(rec: dict) -> str:
    def f(key, fmt):
        v = rec.get(key)
        return "-" if v is None else format(v, fmt)
    return (f"{rec['method']:8s} {rec['victim']:24s} P={rec.get('params', 0):7d} "
            f"h={f('hidden', 'd')}/{rec.get('true_hidden')} q={f('queries', 'd')} "
            f"q/P={f('queries_per_param', '.3f')} fid={f('fidelity', '.5f')}/"
            f"{f('fidelity_digits', '.5f')} rel={f('max_rel_error', '.1e')} "
            f"par={f('param_error', '.1e')} t={f('seconds', '.2f')}s "
            f"(+{f('compile_seconds', '.2f')}s jit) mem={f('peak_mb', '.0f')}MB  {rec['status']}")


def _art_available() -> bool:
    return importlib.util.find_spec("art") is not None


def _skip_art(spec: VictimSpec, records: list[dict]) -> Optional[str]:
    """ART victims past one it already timed out on (same kind, k, and no fewer d and h)."""
    for rec in records:
        if rec.get("method") != "art" or rec.get("status") != "timeout":
            continue
        done = VictimSpec.from_key(rec["victim"])
        if (done.kind == spec.kind and done.k == spec.k and spec.d >= done.d
                and spec.h >= done.h):
            return f"skipped: ART timed out on the smaller {done.key}"
    return None


def orchestrate(args, save=lambda records: None) -> list[dict]:
    """Runs every victim's workers in turn; ``save(records)`` after each record (so that an
    interrupted sweep keeps what it measured). Returns the records, the paper's rows last."""
    specs = ([VictimSpec.from_key(k) for k in args.victims.split(",")] if args.victims
             else sweep_specs(args.quick))
    art = args.art and _art_available()
    if args.art and not art:
        print("ART is not installed (pip install -e '.[compare]'): no ART rows", flush=True)
    records = []
    for spec in specs:
        if spec.kind == "digits" and not (CACHE / f"{spec.key}-steps{TRAIN_STEPS}.npz").exists():
            print(f"training {spec.key} (cached in {CACHE})", flush=True)
            rec = _run_worker("prepare", spec, args, None)
            if rec.get("status") != "ok":
                print(f"  could not build it: {rec.get('status')}", flush=True)
        rec = _run_worker("fidelity", spec, args, None)
        records.append(rec)
        print(_line(rec), flush=True)
        save(records + paper_records())
        if art:
            skip = _skip_art(spec, records)
            if skip:
                rec = _stub_record("art", spec, args, skip, timeout_s=args.art_timeout)
            else:
                hard = None if not args.art_timeout else args.art_timeout + 900
                rec = _run_worker("art", spec, args, hard)
            records.append(rec)
            print(_line(rec), flush=True)
            save(records + paper_records())
    return records + paper_records()


def worker(args) -> int:
    spec = VictimSpec.from_key(args.victims)
    if args.worker == "prepare":
        build_victim(spec)
        rec = dict(status="ok")
    elif args.worker == "fidelity":
        rec = run_fidelity(spec, timeout=args.timeout, samples=args.samples, seed=args.seed,
                           repeat=not args.no_repeat)
    else:
        rec = run_art(spec, timeout=args.art_timeout, samples=args.samples, seed=args.seed,
                      art_samples=args.art_samples)
    Path(args.record_out).write_text(json.dumps(_clean(rec)))
    return 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="three small victims (smoke runs)")
    ap.add_argument("--victims", default=None,
                    help="comma-separated victim keys, e.g. random-784-32-10-s0,digits-64-16-10-s0")
    ap.add_argument("--backend", choices=sorted(PLATFORMS), default="cpu",
                    help="JAX platform of the workers (JAX_PLATFORMS is set before jax loads)")
    ap.add_argument("--out", default=None,
                    help="results folder (default benchmarks/results, .../quick with --quick, "
                         ".../gpu with --backend gpu)")
    ap.add_argument("--name", default="sweep", help="stem of the output files")
    ap.add_argument("--samples", type=int, default=100_000, help="Gaussian test inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="cap in seconds on this engine's extractions of one victim")
    ap.add_argument("--art", action=argparse.BooleanOptionalAction, default=True,
                    help="run ART's FunctionallyEquivalentExtraction too (when installed)")
    ap.add_argument("--art-timeout", type=float, default=None,
                    help="cap in seconds on ART per victim (default 600, 30 with --quick)")
    ap.add_argument("--art-samples", type=int, default=1000,
                    help="Gaussian inputs ART fits its output layer on (counted as queries)")
    ap.add_argument("--no-repeat", action="store_true",
                    help="extract once (compile time then included in seconds, not apart)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--worker", choices=("prepare", "fidelity", "art"), help=argparse.SUPPRESS)
    ap.add_argument("--record-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.art_timeout is None:
        args.art_timeout = 30.0 if args.quick else 600.0
    if args.out is None:
        args.out = str(RESULTS / ("quick" if args.quick else "gpu" if args.backend == "gpu"
                                  else ""))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(records):
        (out / f"{args.name}.json").write_text(json.dumps(_clean(records), indent=1))

    records = _clean(orchestrate(args, save))
    save(records)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import plots

    (out / f"{args.name}.md").write_text(plots.markdown(records))
    if not args.no_plots:
        plots.plot_all(records, out, args.name)
    print(f"wrote {out / args.name}.json/.md/_queries.png/_time.png "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
