"""Learning-based extraction and the hybrid: fit a surrogate to the victim's answers with optax.

Two families of model extraction (Jagielski et al., USENIX Security 2020, Sec. 3) meet here.
*Learning-based* extraction (:func:`learn`) trains a copy on the victim's answers: cheap per query,
never exact. The *hybrid* (:func:`finetune`) starts from a direct recovery that stopped short (the
budget ran out, a unit was missed, the victim computes in float32) and finishes by learning: the
hyperplanes it recovered stay fixed, new hidden units stand in for the missing ones, and only
those units and the output layer are trained.

The victim answers with logits (full scores), so the loss regresses them (mean squared error,
scaled by the answers' spread) and adds an agreement term, the cross-entropy against the victim's
predicted class (sign when ``k == 1``), which weighs the decision boundaries that fidelity
counts. Training is one jitted ``lax.fori_loop`` of Adam steps on minibatches; the labelled set
lives in a zero-padded buffer of fixed capacity, so the active strategy's growing set reuses the
compiled loop.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import compiling
from .network import ReLUNetwork
from .oracle import Oracle
from .results import Event, Extraction, Kind, Status
from .solve import fit_output_layer

log = logging.getLogger("fidelity")

STRATEGIES = ("random", "pool", "active", "semi")


@dataclass(frozen=True)
class LearnConfig:
    """Options of :func:`learn` and :func:`finetune`; every loop is bounded by one of them.

    Attributes:
        steps: Adam steps per training round.
        batch_size: rows per Adam step (sampled with replacement from the labelled set).
        learning_rate: peak learning rate (cosine decay to 5% of it over ``steps``).
        ce_weight: weight of the agreement term (cross-entropy on the victim's class) against
            the logit regression term.
        val_fraction: share of the budget spent on validation rows (they are counted); they
            choose between the Adam solution and its least-squares output-layer polish, and
            give the agreement estimate in ``notes``.
        max_val: cap on validation rows.
        rounds: active strategy: selection rounds after the first training.
        first_fraction: active strategy: share of the training rows labelled before the
            first selection (drawn at random from the pool).
        candidates: active strategy: candidates scored per row selected when the pool's
            unlabelled images run short (pool-derived candidates fill up the rest).
        mix_noise: standard deviation, in units of the pool's spread, of the Gaussian noise added
            to pool-derived rows (convex mixes of two pool images).
        noise_fraction: :func:`finetune` with a pool: share of the training rows drawn from
            Gaussian noise rather than from the pool.
        init_scale: standard deviation of the output weights of new units at the start (small:
            the least-squares start of the output layer then sets them).
        semi_weight: ``'semi'``: weight of the consistency term on unlabelled pool inputs.
        semi_threshold: ``'semi'``: confidence (softmax of the surrogate's logits, sigmoid when
            ``k == 1``) above which a weakly augmented input's class becomes a pseudo-label.
        semi_ratio: ``'semi'``: unlabelled rows per labelled row in each Adam step.
        semi_shift: ``'semi'``: largest shift of the strong augmentation, as a share of the
            image side (at least one pixel when positive); needs square images or
            ``image_shape``. Off by default: on the digits victims, one-pixel shifts of the 8x8
            images cost agreement with the victim (0.944-0.966 against 0.979 without, 250
            queries), which is not shift-invariant.
        semi_noise: ``'semi'``: noise of the weak and the strong augmentation, in units of the
            pool's spread.
        semi_target: ``'semi'``: ``'class'``, the weak input's confident class is the target
            of the strong one (FixMatch); ``'logits'``, its logits are (Pi-model).
        image_shape: ``(height, width)`` of the inputs for the shifts of ``'semi'``; default:
            square images when ``d`` is a square, else no shifts (noise only).
        dtype: precision of the Adam steps (``'float32'``: twice as fast on CPU, and the
            surrogate is approximate anyway); the least-squares output layer, validation and the
            returned network are float64, and fixed rows keep their float64 values.
    """

    steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 3e-3
    ce_weight: float = 0.1
    val_fraction: float = 0.1
    max_val: int = 256
    rounds: int = 3
    first_fraction: float = 0.25
    candidates: int = 8
    mix_noise: float = 0.05
    noise_fraction: float = 0.2
    init_scale: float = 1e-2
    semi_weight: float = 0.1
    semi_threshold: float = 0.95
    semi_ratio: int = 2
    semi_shift: float = 0.0
    semi_noise: tuple = (0.05, 0.2)
    semi_target: str = "class"
    image_shape: Optional[tuple] = None
    dtype: str = "float32"


# ---------------------------------------------------------------------------- the model and loss
def _apply(params, fixed, x):
    """Surrogate logits: fixed rows ``(h0, d + 1)`` and trainable units ``w, b`` share ``a, c``."""
    z = jnp.concatenate([x @ fixed[:, :-1].T + fixed[:, -1], x @ params["w"].T + params["b"]], 1)
    return jax.nn.relu(z) @ params["a"].T + params["c"]


def _loss(params, fixed, x, y, scale, ce_weight):
    pred = _apply(params, fixed, x)
    mse = jnp.mean(((pred - y) / scale) ** 2)
    if y.shape[1] == 1:
        ce = optax.sigmoid_binary_cross_entropy(pred[:, 0], (y[:, 0] > 0).astype(pred.dtype))
    else:
        ce = optax.softmax_cross_entropy_with_integer_labels(pred, jnp.argmax(y, 1))
    return mse + ce_weight * jnp.mean(ce)


@partial(compiling.jit, static_argnames=("steps", "batch", "lr", "ce_weight"))
def _fit(params, fixed, x, y, n, scale, key, *, steps, batch, lr, ce_weight):
    """``steps`` Adam steps on minibatches drawn from the first ``n`` rows of ``x, y``."""
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))

    def body(_, carry):
        p, s, k = carry
        k, sub = jax.random.split(k)
        idx = jax.random.randint(sub, (batch,), 0, n)
        g = jax.grad(_loss)(p, fixed, x[idx], y[idx], scale, ce_weight)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, k

    params, _, _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params), key))
    return params


def _shift(x, dy, dx, *, shape, pad):
    """One image ``(h * w,)`` moved by ``(dy, dx)`` pixels, zeros shifted in."""
    img = jnp.pad(x.reshape(shape), pad)
    return jax.lax.dynamic_slice(img, (pad - dy, pad - dx), shape).reshape(-1)


def _augment(key, x, noise, *, shape, pad):
    """Random shifts of up to ``pad`` pixels (none when ``pad == 0``) and Gaussian noise."""
    k1, k2 = jax.random.split(key)
    if pad:
        d = jax.random.randint(k1, (x.shape[0], 2), -pad, pad + 1)
        x = jax.vmap(partial(_shift, shape=shape, pad=pad))(x, d[:, 0], d[:, 1])
    return x + noise * jax.random.normal(k2, x.shape, x.dtype)


def _consistency(params, fixed, key, xu, tau, noise_w, noise_s, scale, *, shape, pad, logits):
    """FixMatch's unlabelled term (Sohn et al., NeurIPS 2020): the class of a weakly augmented
    input, where confident, is the target of a strongly augmented copy of the same input; with
    ``logits``, the weak input's logits are (the Pi-model of Laine & Aila, ICLR 2017)."""
    kw, ks = jax.random.split(key)
    weak = jax.lax.stop_gradient(_apply(params, fixed, _augment(kw, xu, noise_w, shape=shape,
                                                                    pad=0)))
    strong = _apply(params, fixed, _augment(ks, xu, noise_s, shape=shape, pad=pad))
    if logits:
        return jnp.mean(((strong - weak) / scale) ** 2)
    if weak.shape[1] == 1:
        conf = jax.nn.sigmoid(jnp.abs(weak[:, 0]))
        ce = optax.sigmoid_binary_cross_entropy(strong[:, 0], (weak[:, 0] > 0).astype(strong.dtype))
    else:
        conf = jax.nn.softmax(weak).max(1)
        ce = optax.softmax_cross_entropy_with_integer_labels(strong, jnp.argmax(weak, 1))
    return jnp.mean(jnp.where(conf >= tau, ce, 0.0))


@partial(compiling.jit, static_argnames=("steps", "batch", "ubatch", "lr", "ce_weight", "shape",
                                         "pad", "logits"))
def _fit_semi(params, fixed, x, y, n, xu, scale, key, weight, tau, noise_w, noise_s, *, steps,
              batch, ubatch, lr, ce_weight, shape, pad, logits):
    """:func:`_fit` plus the consistency term on ``ubatch`` unlabelled rows of ``xu`` per step."""
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))

    def loss(p, xb, yb, ku, xub):
        return (_loss(p, fixed, xb, yb, scale, ce_weight)
                + weight * _consistency(p, fixed, ku, xub, tau, noise_w, noise_s, scale,
                                        shape=shape, pad=pad, logits=logits))

    def body(_, carry):
        p, s, k = carry
        k, k1, k2, k3 = jax.random.split(k, 4)
        idx = jax.random.randint(k1, (batch,), 0, n)
        uidx = jax.random.randint(k2, (ubatch,), 0, xu.shape[0])
        g = jax.grad(loss)(p, x[idx], y[idx], k3, xu[uidx])
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, k

    params, _, _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params), key))
    return params


_predict = compiling.jit(_apply)
_loss_jit = compiling.jit(_loss, static_argnames=("ce_weight",))


# ---------------------------------------------------------------------------- queries
class _Sampler:
    """Draws query rows: Gaussian noise, pool images (without replacement), pool-derived rows."""

    def __init__(self, pool: Optional[np.ndarray], d: int, rng: np.random.Generator,
                 mix_noise: float):
        self.rng = rng
        self.pool = pool
        self.d = d
        self.mix_noise = mix_noise
        if pool is None:
            self.mean, self.std = np.zeros(d), 1.0
            self.order = np.zeros(0, int)
        else:
            # Gaussian noise with the pool's mean and overall spread (not its per-pixel spread,
            # which is 0 on the borders of the digits)
            self.mean, self.std = pool.mean(0), float(pool.std()) or 1.0
            self.order = rng.permutation(pool.shape[0])
        self.next = 0

    @property
    def unused(self) -> np.ndarray:
        return self.order[self.next:]

    def gaussian(self, n: int) -> np.ndarray:
        return self.mean + self.std * self.rng.normal(size=(n, self.d))

    def mixed(self, n: int) -> np.ndarray:
        """Convex mixes of two random pool images plus a little noise."""
        i = self.rng.integers(0, self.pool.shape[0], (2, n))
        lam = self.rng.uniform(0.0, 1.0, (n, 1))
        x = lam * self.pool[i[0]] + (1 - lam) * self.pool[i[1]]
        return x + self.mix_noise * self.std * self.rng.normal(size=x.shape)

    def from_pool(self, n: int) -> np.ndarray:
        """Unused pool images first; pool-derived rows once the pool is spent."""
        take = self.order[self.next:self.next + n]
        self.next += take.size
        rows = self.pool[take]
        if take.size < n:
            rows = np.concatenate([rows, self.mixed(n - take.size)])
        return rows

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Marks the pool images ``idx`` as used (moves them to the used part of the order)."""
        chosen = np.isin(self.order[self.next:], idx)
        rest = self.order[self.next:]
        self.order = np.concatenate([self.order[:self.next], rest[chosen], rest[~chosen]])
        self.next += int(chosen.sum())
        return self.pool[idx]


class _Data:
    """The labelled set in a zero-padded buffer of fixed capacity (one compilation per budget)."""

    def __init__(self, capacity: int, d: int):
        self.cap = int(capacity)
        self.x = np.zeros((self.cap, d))
        self.y = None
        self.n = 0

    def add(self, x: np.ndarray, y: np.ndarray):
        if self.y is None:
            self.y = np.zeros((self.cap, y.shape[1]))
        self.x[self.n:self.n + x.shape[0]] = x
        self.y[self.n:self.n + x.shape[0]] = y
        self.n += x.shape[0]


# ---------------------------------------------------------------------------- the shared trainer
class _Trainer:
    """Queries, trains and polishes one surrogate (private; results are frozen Extractions)."""

    def __init__(self, oracle: Oracle, budget: int, cfg: LearnConfig, seed: int,
                 pool: Optional[np.ndarray], progress: Optional[Callable[[dict], None]]):
        self.oracle = oracle
        self.cfg = cfg
        self.q0 = oracle.queries
        self.rng = np.random.default_rng(seed)
        self.key = jax.random.key(seed)
        self.sampler = _Sampler(pool, oracle.input_dim, self.rng, cfg.mix_noise)
        self.stage = {"train": 0, "validation": 0}
        self.progress = progress
        self.n_val = 0
        if budget >= 10 and cfg.val_fraction > 0:
            self.n_val = int(min(cfg.max_val, max(1, round(cfg.val_fraction * budget))))
        self.n_train = budget - self.n_val
        self.data = _Data(self.n_train, oracle.input_dim)
        self.val_x = self.val_y = None
        self.notes: list[str] = []

    def start(self, source: str) -> None:
        """Refuses a budget with no training rows, then asks the validation rows."""
        if self.n_train < 1:
            raise ValueError(f"budget={self.n_train + self.n_val} leaves no training rows")
        if self.n_val:
            self.val_x = _rows_of(self.sampler, self.n_val, source)
            self.val_y = self.ask(self.val_x, "validation")

    def ask(self, x: np.ndarray, stage: str) -> np.ndarray:
        y = self.oracle(x)
        self.stage[stage] += x.shape[0]
        return y

    def label(self, x: np.ndarray):
        self.data.add(x, self.ask(x, "train"))

    def split_key(self):
        self.key, sub = jax.random.split(self.key)
        return sub

    def init_params(self, fixed: np.ndarray, hidden: int, k: int):
        d = self.oracle.input_dim
        w = self.rng.normal(0.0, np.sqrt(2.0 / d), (hidden, d)) / self.sampler.std
        # biases centre the new hyperplanes on the data (pool mean, or the origin)
        b = -(w @ self.sampler.mean) + self.rng.normal(0.0, 0.1, hidden)
        a = self.rng.normal(0.0, self.cfg.init_scale, (k, fixed.shape[0] + hidden))
        return {"w": w, "b": b, "a": a, "c": np.zeros(k)}

    def scale(self) -> float:
        y = self.data.y[:self.data.n]
        return float(max(y.std(), 1e-12))

    def least_squares_output(self, params, fixed):
        """The output layer refitted by float64 least squares on the labelled set."""
        rows = np.concatenate([fixed, np.concatenate([params["w"], params["b"][:, None]], 1)])
        a, c, _ = fit_output_layer(rows, self.data.x[:self.data.n], self.data.y[:self.data.n])
        return dict(params, a=a, c=c)

    def train(self, params, fixed):
        cfg = self.cfg
        dt = np.dtype(cfg.dtype)
        jp = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), params)
        out = _fit(jp, jnp.asarray(fixed, dt), jnp.asarray(self.data.x, dt),
                   jnp.asarray(self.data.y, dt), self.data.n, self.scale(), self.split_key(),
                   steps=cfg.steps, batch=cfg.batch_size, lr=cfg.learning_rate,
                   ce_weight=cfg.ce_weight)
        return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), out)

    def train_semi(self, params, fixed):
        """:meth:`train` with FixMatch-style consistency on the whole pool (unlabelled)."""
        cfg = self.cfg
        dt = np.dtype(cfg.dtype)
        d = self.oracle.input_dim
        shape = cfg.image_shape
        if shape is None:
            side = int(round(np.sqrt(d)))
            shape = (side, side) if side * side == d else None
        pad = 0 if shape is None or cfg.semi_shift <= 0 else \
            max(1, int(round(cfg.semi_shift * max(shape))))
        shape = (1, d) if shape is None else tuple(int(v) for v in shape)
        jp = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), params)
        noise_w, noise_s = (float(v) * self.sampler.std for v in cfg.semi_noise)
        out = _fit_semi(jp, jnp.asarray(fixed, dt), jnp.asarray(self.data.x, dt),
                        jnp.asarray(self.data.y, dt), self.data.n,
                        jnp.asarray(self.sampler.pool, dt), self.scale(), self.split_key(),
                        cfg.semi_weight, cfg.semi_threshold, noise_w, noise_s,
                        steps=cfg.steps, batch=cfg.batch_size,
                        ubatch=cfg.semi_ratio * cfg.batch_size, lr=cfg.learning_rate,
                        ce_weight=cfg.ce_weight, shape=shape, pad=pad,
                        logits=cfg.semi_target == "logits")
        self.notes.append(f"semi-supervised: consistency on {self.sampler.pool.shape[0]} "
                          f"unlabelled pool inputs (shifts up to {pad} px, threshold "
                          f"{cfg.semi_threshold})")
        return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), out)

    def val_loss(self, params, fixed) -> float:
        return float(_loss_jit(params, fixed, self.val_x, self.val_y, self.scale(),
                               ce_weight=self.cfg.ce_weight))

    def polish(self, params, fixed):
        """Adam's solution or its least-squares output layer, whichever validates better."""
        ls = self.least_squares_output(params, fixed)
        if self.n_val == 0:
            return params
        if self.val_loss(ls, fixed) < self.val_loss(params, fixed):
            self.notes.append("least-squares output layer kept (better on validation)")
            return ls
        return params

    def network(self, params, fixed) -> ReLUNetwork:
        w1 = np.concatenate([fixed[:, :-1], params["w"]])
        b1 = np.concatenate([fixed[:, -1], params["b"]])
        return ReLUNetwork([w1, np.asarray(params["a"], np.float64)],
                           [b1, np.asarray(params["c"], np.float64)])

    def validate(self, net: ReLUNetwork) -> float:
        """Notes the agreement on the validation rows; returns the relative logit error."""
        if self.n_val == 0:
            return float("nan")
        pred = net(self.val_x)
        if self.val_y.shape[1] == 1:
            agree = np.mean(np.sign(pred[:, 0]) == np.sign(self.val_y[:, 0]))
        else:
            agree = np.mean(pred.argmax(1) == self.val_y.argmax(1))
        err = float(np.abs(pred - self.val_y).max() / max(np.abs(self.val_y).max(), 1e-300))
        self.notes.append(f"validation ({self.n_val} rows): agreement {agree:.4f}, "
                          f"max relative logit error {err:.2e}")
        return err

    def report(self, **info):
        if self.progress is not None:
            self.progress(dict(queries=self.oracle.queries - self.q0, labelled=self.data.n, **info))

    def spent(self) -> int:
        return self.oracle.queries - self.q0


def _check_common(oracle, budget, pool, options):
    unknown = set(options) - {f.name for f in dataclasses.fields(LearnConfig)}
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; see fidelity.LearnConfig")
    if not isinstance(oracle, Oracle):
        raise TypeError("needs a fidelity.Oracle; wrap the victim in Oracle(...)")
    budget = int(budget)
    if budget < 1:
        raise ValueError("budget must be a positive number of rows")
    if oracle.remaining is not None and budget > oracle.remaining:
        raise ValueError(f"budget={budget} exceeds the oracle's remaining {oracle.remaining} rows; "
                         "pass a smaller budget or a fresh Oracle")
    if pool is not None:
        pool = np.asarray(pool, np.float64)
        if pool.ndim != 2 or pool.shape[1] != oracle.input_dim or pool.shape[0] < 2:
            raise ValueError(f"pool must be an array (n >= 2, {oracle.input_dim}) of inputs, "
                             f"got shape {pool.shape}")
    cfg = LearnConfig(**options)
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {cfg.dtype!r}")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.rounds < 0:
        raise ValueError("steps and batch_size must be positive and rounds non-negative")
    if cfg.semi_ratio < 1 or not 0.0 <= cfg.semi_threshold <= 1.0 or cfg.semi_weight < 0 \
            or cfg.semi_shift < 0 or len(cfg.semi_noise) != 2 or min(cfg.semi_noise) < 0:
        raise ValueError("semi_ratio must be >= 1, semi_threshold in [0, 1], semi_weight, "
                         "semi_shift and both semi_noise levels non-negative")
    if cfg.semi_target not in ("class", "logits"):
        raise ValueError(f"semi_target must be 'class' or 'logits', got {cfg.semi_target!r}")
    if cfg.image_shape is not None and int(np.prod(cfg.image_shape)) != oracle.input_dim:
        raise ValueError(f"image_shape {cfg.image_shape} does not hold {oracle.input_dim} inputs")
    return budget, pool, cfg


def _rows_of(sampler: _Sampler, n: int, source: str) -> np.ndarray:
    return sampler.gaussian(n) if source == "random" else sampler.from_pool(n)


def _margin(logits: np.ndarray) -> np.ndarray:
    if logits.shape[1] == 1:
        return np.abs(logits[:, 0])
    top2 = np.sort(logits, 1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


# ---------------------------------------------------------------------------- public API
def learn(oracle: Oracle, *, hidden: int, budget: int, pool: Optional[np.ndarray] = None,
          strategy: str = "random", seed: int = 0,
          progress: Optional[Callable[[dict], None]] = None, **options) -> Extraction:
    """Learning-based extraction: trains a one-hidden-layer surrogate on at most ``budget`` answers.

    Args:
        oracle: the counting :class:`Oracle` around the victim.
        hidden: width of the surrogate's hidden layer.
        budget: the most rows sent to the oracle, validation rows included.
        pool: unlabelled natural inputs ``(n, d)``; required by ``'pool'`` and ``'active'``.
        strategy: where queries come from. ``'random'``: Gaussian noise (with the pool's mean
            and overall spread when a pool is given, else standard normal). ``'pool'``: pool
            inputs in random order, then (once the pool is spent) pool-derived rows, convex
            mixes of two pool inputs plus a little noise. ``'active'``: a random quarter first,
            then ``rounds`` rounds that each label the unlabelled pool inputs (or pool-derived
            candidates, when the pool runs short) on which the current surrogate's top-two
            margin is smallest, retraining from the current weights after each round.
            ``'semi'``: queries as ``'pool'``; training adds a consistency term on the whole
            pool, unlabelled (FixMatch, Sohn et al. 2020, in the spirit of MixMatch, Berthelot
            et al. 2019; the semi-supervised row of Jagielski et al. 2020): a weakly augmented
            input (a little noise) that the surrogate classifies confidently gives the
            pseudo-label of a strongly augmented one (shifts and more noise). Pseudo-labels are
            the surrogate's own: no query is spent on them.
        seed: seeds every random choice (queries, initial weights, minibatches).
        progress: optional callback receiving a dict after each training round.
        **options: fields of :class:`LearnConfig`.

    Returns:
        An :class:`~fidelity.Extraction` with ``status='learned'``; ``queries`` is the rows this
        call sent (``stage_queries`` splits them into ``'train'`` and ``'validation'``),
        ``check_error`` the max relative logit error on the validation rows.

    Example:
        >>> victim = ReLUNetwork.random(0, [6, 4, 3])
        >>> result = learn(Oracle(victim), hidden=4, budget=300, steps=200)
        >>> result.status, result.queries <= 300
        ('learned', True)
    """
    budget, pool, cfg = _check_common(oracle, budget, pool, options)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "random" and pool is None:
        raise ValueError(f"strategy={strategy!r} draws queries from a pool: "
                         "pass pool=(n, d) inputs")
    if int(hidden) < 1:
        raise ValueError("hidden must be a positive number of units")
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        run = _Trainer(oracle, budget, cfg, seed, pool, progress)
        source = "random" if strategy == "random" else "pool"
        run.start(source)
        fixed = np.zeros((0, oracle.input_dim + 1))
        if strategy != "active":
            run.label(_rows_of(run.sampler, run.n_train, source))
            k = run.data.y.shape[1]
            params = run.least_squares_output(run.init_params(fixed, int(hidden), k), fixed)
            params = (run.train_semi if strategy == "semi" else run.train)(params, fixed)
            run.report(stage="train")
        else:
            params = _active(run, fixed, int(hidden))
        params = run.polish(params, fixed)
        net = run.network(params, fixed)
        err = run.validate(net)
    run.notes.insert(0, f"strategy {strategy}: {run.data.n} training rows, {run.n_val} validation")
    return Extraction(network=net, queries=run.spent(), hidden_size=int(hidden),
                      status=Status.LEARNED, stage_queries=dict(run.stage), check_error=err,
                      events=_events(run.notes), seconds=time.perf_counter() - t0)


def _active(run: _Trainer, fixed: np.ndarray, hidden: int):
    """Margin-based selection from the pool, growing the labelled set round by round."""
    cfg = run.cfg
    first = max(1, min(run.n_train, int(round(cfg.first_fraction * run.n_train))))
    rounds = max(0, min(cfg.rounds, run.n_train - first))
    run.label(run.sampler.from_pool(first))
    k = run.data.y.shape[1]
    params = run.least_squares_output(run.init_params(fixed, hidden, k), fixed)
    params = run.train(params, fixed)
    run.report(stage="active", round=0)
    left = run.n_train - first
    for r in range(rounds):
        chunk = left // (rounds - r)
        left -= chunk
        unused = run.sampler.unused
        n_mixed = max(0, cfg.candidates * chunk - unused.size)
        cand = np.concatenate([run.sampler.pool[unused], run.sampler.mixed(n_mixed)]) \
            if n_mixed else run.sampler.pool[unused]
        order = np.argsort(_margin(np.asarray(_predict(params, fixed, cand))), kind="stable")
        pick = order[:chunk]
        from_pool = pick[pick < unused.size]
        rows = np.concatenate([run.sampler.take(unused[from_pool]),
                               cand[pick[pick >= unused.size]]])
        run.label(rows)
        params = run.train(params, fixed)
        run.report(stage="active", round=r + 1)
    return params


def finetune(extraction: Extraction, oracle: Oracle, *, budget: int,
             pool: Optional[np.ndarray] = None, hidden: Optional[int] = None, seed: int = 0,
             progress: Optional[Callable[[dict], None]] = None, **options) -> Extraction:
    """The hybrid: completes a partial direct recovery by training on new queries.

    The hyperplanes the extraction recovered stay **fixed** (not trained under an anchor): a
    direct recovery gets them to ~1e-10, closer than any minibatch gradient noise could keep
    them, and freezing them leaves fewer parameters to learn from few queries. Their
    orientation (sign) is only verified when the extraction's status is ``'ok'``; otherwise each
    hyperplane is kept with both orientations, ``relu(z)`` and ``relu(-z)`` (a budget-stopped
    extraction returns most of its units in such pairs already), and the trained output layer
    decides. New units, trained freely, stand in for the missing ones; the output layer is
    trained for all. The loss regresses the victim's logits and adds the cross-entropy on its
    predicted class (agreement); rows come from the pool (unused images first, then pool-derived
    mixes) and, for ``noise_fraction`` of them, from Gaussian noise.

    Args:
        extraction: a (partial) :class:`~fidelity.Extraction`, e.g. the ``.result`` of a
            :class:`~fidelity.QueryBudgetExceeded`; its ``network`` may be ``None``.
        oracle: a counting :class:`Oracle` around the same victim with room for ``budget`` rows.
        budget: the most new rows sent, validation included.
        pool: unlabelled natural inputs ``(n, d)``; without one, queries are Gaussian noise.
        hidden: target hidden width (hyperplanes found plus new units); default: twice the
            hyperplanes found, at least 8 more, when the extraction is not ``'ok'``, else as
            found plus 8 (there is no way to count missing units from the outputs alone).
        seed: seeds every random choice.
        progress: optional callback receiving a dict after training.
        **options: fields of :class:`LearnConfig`.

    Returns:
        An :class:`~fidelity.Extraction` with ``status='finetuned'``; ``queries`` counts the
        extraction's rows plus the new ones, and ``stage_queries`` both.

    Example:
        >>> victim = ReLUNetwork.random(0, [8, 6, 3])
        >>> try:
        ...     extract(Oracle(victim, budget=40))
        ... except QueryBudgetExceeded as stop:
        ...     partial = stop.result
        >>> result = finetune(partial, Oracle(victim), budget=300, hidden=6, steps=200)
        >>> result.status
        'finetuned'
    """
    if not isinstance(extraction, Extraction):
        raise TypeError("finetune needs a fidelity.Extraction (e.g. QueryBudgetExceeded.result)")
    budget, pool, cfg = _check_common(oracle, budget, pool, options)
    d = oracle.input_dim
    fixed, n_planes, n_pairs = _fixed_rows(extraction, d)
    if hidden is None:
        if extraction.network is None:
            raise ValueError("the extraction has no network: pass hidden= (the target width)")
        hidden = n_planes + (8 if extraction.status == "ok" else max(8, n_planes))
    new = max(0, int(hidden) - n_planes)
    if new == 0 and fixed.shape[0] == 0:
        raise ValueError("nothing to train: the extraction has no units and hidden adds none")
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        run = _Trainer(oracle, budget, cfg, seed, pool, progress)
        run.start("random" if pool is None else "pool")
        n_noise = run.n_train if pool is None else int(round(cfg.noise_fraction * run.n_train))
        rows = run.sampler.gaussian(n_noise)
        if run.n_train > n_noise:
            rows = np.concatenate([run.sampler.from_pool(run.n_train - n_noise), rows])
        run.label(rows)
        k = run.data.y.shape[1]
        params = run.least_squares_output(run.init_params(fixed, new, k), fixed)
        params = run.train(params, fixed)
        run.report(stage="finetune")
        params = run.polish(params, fixed)
        net = run.network(params, fixed)
        err = run.validate(net)
    stage = dict(extraction.stage_queries)
    for name, n in run.stage.items():
        stage[f"finetune_{name}"] = n
    notes = (f"kept {n_planes} recovered hyperplanes fixed ({n_pairs} with both orientations), "
             f"trained {new} new units and the output layer on {run.data.n} rows", *run.notes)
    return Extraction(network=net, queries=extraction.queries + run.spent(),
                      hidden_size=net.weights[0].shape[0], status=Status.FINETUNED,
                      stage_queries=stage, lines=extraction.lines, check_error=err,
                      events=_events(notes) + tuple(extraction.events),
                      seconds=extraction.seconds + time.perf_counter() - t0)


def _events(notes) -> tuple:
    """The trainer's notes as events."""
    return tuple(Event(Kind.LEARNING, n) for n in notes)


def _fixed_rows(extraction: Extraction, d: int):
    """Unique recovered hyperplanes as fixed rows ``(h0, d + 1)``, normalised to unit norm.

    Rows on one hyperplane (``|cos| > 1 - 1e-9``) are merged; a hyperplane is kept with both
    orientations unless the extraction was verified (``'ok'``) and found it with one.
    """
    net = extraction.network
    if net is None or net.weights[0].shape[0] == 0:
        return np.zeros((0, d + 1)), 0, 0
    if len(net.weights) != 2:
        raise ValueError("finetune supports one-hidden-layer extractions")
    rows = np.concatenate([net.weights[0], net.biases[0][:, None]], 1).astype(np.float64)
    norm = np.linalg.norm(rows, axis=1)
    rows = rows[norm > 0] / norm[norm > 0, None]
    planes: list[list[np.ndarray]] = []
    for r in rows:
        for group in planes:
            c = float(group[0] @ r)
            if abs(c) > 1 - 1e-9:
                if not any(float(g @ r) > 1 - 1e-9 for g in group):
                    group.append(r)
                break
        else:
            planes.append([r])
    out, pairs = [], 0
    for group in planes:
        if len(group) > 1 or extraction.status != "ok":
            out += [group[0], -group[0]]
            pairs += 1
        else:
            out.append(group[0])
    return np.array(out).reshape(-1, d + 1), len(planes), pairs
