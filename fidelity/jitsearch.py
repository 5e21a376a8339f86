"""Stage 1 inside ``jit``: the critical-point search for a victim that is itself a JAX network.

:func:`search_lines_jit` runs the algorithm of :func:`fidelity.search.search_lines` (same
tolerances, two-sided extrapolation, three-query verification, "mixed" splits and merge of
duplicates) with the whole loop on the device: the victim's forward pass is evaluated inside a
``jax.lax.while_loop``, so the same code runs on CPU, GPU or TPU with one dispatch per search
instead of one per batch.

Layout. The open intervals of all lines live in one flat buffer of fixed capacity, in the order
the host path keeps them (survivors of a round in order, left children of plain splits, then
right children, then the three parts of each "mixed" interval). Each step of the loop sends one
batch, as the host path does: a round's three probes per interval, then, if any interval is
"mixed", its two extra probes. A batch of ``n`` rows is evaluated as the victim object would
evaluate it (zero-padded to :func:`fidelity.network.padded_rows`, split over every visible device
when there is more than one), through ``lax.switch`` over those bucket sizes. With the same batch
shapes, row order and float64 arithmetic rounded as numpy rounds it (see :func:`_unfused`,
:func:`_divisor`, :func:`_pairwise_sum`), the answers, decisions and kinks equal the host path's
bit for bit.

Capacity. A round whose intervals or kinks would not fit is discarded before anything of it is
committed; the host doubles the buffer (one recompilation) and resumes from the same state, so
the result does not depend on the starting capacity. Past ``max_capacity`` the open intervals
are reported as unresolved instead.

Counting. ``rows_used`` is the number of rows whose answers the algorithm uses: 4 per line at the
start, 3 per interval tried, 2 more per "mixed" interval, exactly what ``search_lines`` sends
through a counting oracle. Padding rows are not counted.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .errors import OracleError
from .network import ReLUNetwork, batch_sharding, padded_rows
from .oracle import JaxFunction
from . import compiling, search
from .search import EPS, LineKinks

# stop codes of the device loop
_RUNNING, _DONE, _BUDGET, _GROW, _NONFINITE = 0, 1, 2, 3, 4


class _State(NamedTuple):
    """Everything the device loop carries (N interval slots, M kink slots, L lines)."""

    n: jax.Array           # () int32 open intervals: slots [:n], in the host path's order
    line: jax.Array        # (N,) int32
    iv: jax.Array          # (N, 4 + 4k) float64: tl, tr, dl, dr, gl, gr, sl, sr
    g3: jax.Array          # (N, 3, k) the round's first answers, kept for its "mixed" batch
    phase: jax.Array       # () int32: 0 a round's first batch is next, 1 its "mixed" batch
    pending: jax.Array     # () int64 rows of the first batch of the round in progress
    nf: jax.Array          # () int32 kinks found
    fline: jax.Array       # (M,) int32
    fv: jax.Array          # (M, 2 + 2k): t, verified, slopes left and right (NaN: unknown)
    unresolved: jax.Array  # (L,) int32
    rows: jax.Array        # () int64 rows whose answers were used, rounds committed
    rounds: jax.Array      # () int32
    stop: jax.Array        # () int32 one of _RUNNING, ...
    need: jax.Array        # (2,) int32 interval and kink slots a discarded round needed


class _Spec(NamedTuple):
    """What is static about the victim (hashable: part of the compiled function's key)."""

    apply: object          # apply(params, x) -> (n, k), jittable
    dtype: object          # the dtype the victim takes its inputs in
    k: int                 # outputs
    sharding: object       # NamedSharding over the devices, or None


class _Consts(NamedTuple):
    """Arrays and scalars fixed for one search (arguments, so a new victim does not recompile)."""

    params: object         # the victim's parameters: an opaque pytree
    x0: jax.Array          # (L, d) float64
    v: jax.Array
    floor: jax.Array       # (L,)
    delta: jax.Array       # () float64
    min_delta: jax.Array
    noise_factor: jax.Array
    noise_abs: jax.Array
    one: jax.Array         # () float64 1.0 the compiler cannot see (see _unfused)
    max_rounds: jax.Array  # () int32
    max_open: jax.Array    # () int64
    budget: jax.Array      # () int64


# ------------------------------------------------------------------ numpy's rounding under XLA
def _unfused(product, one):
    """``product`` rounded on its own before anything is added to it.

    XLA's CPU backend contracts ``a + b * c`` into a fused multiply-add, which rounds once where
    numpy rounds twice. Multiplying by a 1.0 the compiler cannot see keeps the product rounded (a
    fused ``round(b c) * 1 + a`` is exactly numpy's ``a + round(b c)``).
    """
    return product * one


def _divisor(b, shape):
    """``b`` broadcast to ``shape`` for use as a divisor: XLA rewrites ``a / broadcast(b)`` as
    ``a * broadcast(1 / b)``, which rounds twice; the barrier keeps a true division."""
    return lax.optimization_barrier(jnp.broadcast_to(b, shape))


def _pairwise_sum(x):
    """Sum over the last axis in numpy's order (pairwise, eight accumulators per block)."""
    n = x.shape[-1]
    if n < 8:
        out = jnp.zeros(x.shape[:-1], x.dtype)
        for i in range(n):
            out = out + x[..., i]
        return out
    if n > 128:
        half = n // 2
        half -= half % 8
        return _pairwise_sum(x[..., :half]) + _pairwise_sum(x[..., half:])
    r = [x[..., j] for j in range(8)]
    i = 8
    while i < n - n % 8:
        r = [r[j] + x[..., i + j] for j in range(8)]
        i += 8
    out = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for j in range(i, n):
        out = out + x[..., j]
    return out


# ------------------------------------------------------------------ the victim
def _ask(c: _Consts, t, line, n, spec: _Spec):
    """The victim at rows ``x0[line[r]] + t[r] v[line[r]]``, ``r < n`` (answers 0 past ``n``).

    The batch is evaluated as a :class:`~fidelity.network.ReLUNetwork` victim evaluates one of
    ``n`` rows: zero-padded to :func:`~fidelity.network.padded_rows` (to a multiple of the devices)
    and split over the devices, so that every row's answer is the one the host path gets.
    """
    size = t.shape[0]             # a power of two
    sharding = spec.sharding
    zeros = jnp.zeros((size, spec.k), jnp.float64)
    n_dev = 1 if sharding is None else sharding.mesh.size
    # batches have >= 2 rows; padded_rows is constant between powers of two
    buckets = [0] + sorted({padded_rows(1 << i) for i in range(1, size.bit_length())})

    def branch(bucket):
        def run(_):
            if bucket == 0:
                return zeros
            m = min(bucket, size)
            ln = line[:m]
            x = c.x0[ln] + _unfused(t[:m, None] * c.v[ln], c.one)
            x = jnp.where((jnp.arange(m) < n)[:, None], x, 0.0)
            pad = padded_rows(bucket, n_dev) - m
            x = x.astype(spec.dtype)
            if pad:
                x = jnp.concatenate([x, jnp.zeros((pad, x.shape[1]), x.dtype)])
            if sharding is not None:
                x = lax.with_sharding_constraint(x, sharding)
            y = spec.apply(c.params, x)[:m].astype(jnp.float64)
            return zeros.at[:m].set(y)
        return run

    which = jnp.sum(jnp.asarray(buckets[:-1]) < n)   # the smallest bucket >= n
    return lax.switch(which, [branch(b) for b in buckets], None)


# ------------------------------------------------------------------ one round, in two batches
def _fields(iv, k):
    tl, tr, dl, dr = iv[:, 0], iv[:, 1], iv[:, 2], iv[:, 3]
    gl, gr, sl, sr = (iv[:, 4 + j * k: 4 + (j + 1) * k] for j in range(4))
    return tl, tr, dl, dr, gl, gr, sl, sr


def _prepare(s: _State, c: _Consts):
    """The host path's tests before a round's first batch, on every slot."""
    k = s.g3.shape[2]
    tl, tr, dl, dr, gl, gr, sl, sr = _fields(s.iv, k)
    act = jnp.arange(s.line.shape[0]) < s.n
    scale = jnp.maximum(jnp.maximum(jnp.abs(gl).max(1), jnp.abs(gr).max(1)), c.floor[s.line])
    noise = _unfused(c.noise_factor * EPS * jnp.maximum(scale, 1e-300), c.one) + c.noise_abs
    width = tr - tl
    slope_tol = 4 * noise * (1 / dl + 1 / dr)
    den = sl - sr
    wx = width[:, None]
    lin_err = jnp.maximum(jnp.abs(gr - gl - _unfused(sl * wx, c.one)).max(1),
                          jnp.abs(gr - gl - _unfused(sr * wx, c.one)).max(1))
    val_tol = 4 * noise * (1 + width / jnp.minimum(dl, dr))
    linear = (jnp.abs(den).max(1) <= slope_tol) & (lin_err <= val_tol)
    dc = jnp.minimum(c.delta, width / 8)
    tiny = act & (dc < c.min_delta) & ~linear
    keep = act & ~linear & ~tiny
    num = (gr - gl) + _unfused(sl * tl[:, None], c.one) - _unfused(sr * tr[:, None], c.one)
    den2 = _pairwise_sum(_unfused(den * den, c.one))
    t_star = _pairwise_sum(_unfused(num * den, c.one)) / den2
    extrap = (jnp.sqrt(den2) > slope_tol) & jnp.isfinite(t_star)
    extrap &= (t_star > tl + 2 * dc) & (t_star < tr - 2 * dc)
    t_star = jnp.where(extrap, t_star, 0.5 * (tl + tr))
    return dict(tl=tl, tr=tr, dl=dl, dr=dr, gl=gl, gr=gr, sl=sl, sr=sr, act=act, noise=noise,
                dc=dc, tiny=tiny, keep=keep, t_star=t_star, extrap=extrap)


def _judge(p, g3, one):
    """The host path's verification of each candidate from its three answers."""
    tl, tr, dl, dr, gl, gr, sl, sr = (p[n] for n in ("tl", "tr", "dl", "dr", "gl", "gr", "sl",
                                                      "sr"))
    noise, dc, t_star = p["noise"], p["dc"], p["t_star"]
    gm, gs, gp = g3[:, 0], g3[:, 1], g3[:, 2]
    dcx = _divisor(dc[:, None], gs.shape)
    ls = (gs - gm) / dcx
    rs = (gp - gs) / dcx
    tol_l = 4 * noise * (1 / dc + 1 / dl)
    tol_r = 4 * noise * (1 / dc + 1 / dr)
    on_left = (jnp.abs(gs - gl - _unfused(sl * (t_star - tl)[:, None], one)).max(1)
               <= 4 * noise * (1 + (t_star - tl) / dl))
    on_right = (jnp.abs(gs - gr - _unfused(sr * (t_star - tr)[:, None], one)).max(1)
                <= 4 * noise * (1 + (tr - t_star) / dr))
    ok = (p["keep"] & p["extrap"] & on_left & on_right
          & (jnp.abs(ls - sl).max(1) <= tol_l) & (jnp.abs(rs - sr).max(1) <= tol_r))
    split = p["keep"] & ~ok
    # a kink within dc of t*: clean slopes one step further out, cut out [t* - dc, t* + dc]
    mixed = split & (jnp.abs(ls - rs).max(1) > 4 * noise * 2 / dc)
    return dict(ok=ok, mixed=mixed, plain=split & ~mixed, ls=ls, rs=rs, dcx=dcx)


def _rank(flags):
    """Position of each flagged slot among the flagged ones, and how many there are."""
    counts = flags.astype(jnp.int32)
    return jnp.cumsum(counts) - counts, counts.sum(dtype=jnp.int32)


def _commit(s: _State, p, j, g3, gx):
    """The round's children and kinks, placed in the host path's order; ``None`` fields when
    they do not fit (the caller then discards the round)."""
    cap, fcap = s.line.shape[0], s.fline.shape[0]
    tl, tr, dl, dr, gl, gr, sl, sr = (p[n] for n in ("tl", "tr", "dl", "dr", "gl", "gr", "sl",
                                                      "sr"))
    t_star, dc = p["t_star"], p["dc"]
    gm, gs, gp = g3[:, 0], g3[:, 1], g3[:, 2]
    ls, rs, dcx = j["ls"], j["rs"], j["dcx"]
    s_left = (gm - gx[:, 0]) / dcx
    s_right = (gx[:, 1] - gp) / dcx

    def pack(a, b, c_, d, e, f, g, h):
        return jnp.concatenate([jnp.stack([a, b, c_, d], 1), e, f, g, h], 1)

    rank_p, n_plain = _rank(j["plain"])
    rank_m, n_mixed = _rank(j["mixed"])
    plain, mixed = j["plain"], j["mixed"]
    at_plain = lambda first: jnp.where(plain, first + rank_p, cap)  # noqa: E731
    at_mixed = lambda first: jnp.where(mixed, first + rank_m, cap)  # noqa: E731
    kids = [  # (values, slots): the parts in the order search_lines concatenates them
        (pack(tl, t_star, dl, dc, gl, gs, sl, ls), at_plain(0)),
        (pack(t_star, tr, dc, dr, gs, gr, rs, sr), at_plain(n_plain)),
        (pack(tl, t_star - dc, dl, dc, gl, gm, sl, s_left), at_mixed(2 * n_plain)),
        (pack(t_star - dc, t_star + dc, dc, dc, gm, gp, s_left, s_right),
         at_mixed(2 * n_plain + n_mixed)),
        (pack(t_star + dc, tr, dc, dr, gp, gr, s_right, sr), at_mixed(2 * n_plain + 2 * n_mixed)),
    ]
    new_n = 2 * n_plain + 3 * n_mixed
    dest = jnp.concatenate([slots for _, slots in kids])
    iv = s.iv.at[dest].set(jnp.concatenate([vals for vals, _ in kids]), mode="drop")
    line = s.line.at[dest].set(jnp.tile(s.line, len(kids)), mode="drop")

    # kinks: the round's tiny intervals (unverified, at the midpoint), then verified candidates
    rank_t, n_tiny = _rank(p["tiny"])
    rank_o, n_ok = _rank(j["ok"])
    nan = jnp.full_like(sl, jnp.nan)
    found = [
        (jnp.concatenate([(0.5 * (tl + tr))[:, None], jnp.zeros_like(tl)[:, None], nan, nan], 1),
         jnp.where(p["tiny"], s.nf + rank_t, fcap)),
        (jnp.concatenate([t_star[:, None], jnp.ones_like(tl)[:, None], sl, sr], 1),
         jnp.where(j["ok"], s.nf + n_tiny + rank_o, fcap)),
    ]
    fdest = jnp.concatenate([d for _, d in found])
    fv = s.fv.at[fdest].set(jnp.concatenate([vals for vals, _ in found]), mode="drop")
    fline = s.fline.at[fdest].set(jnp.tile(s.line, 2), mode="drop")
    nf = s.nf + n_tiny + n_ok
    fits = (new_n <= cap) & (nf <= fcap)
    return s._replace(n=new_n, iv=iv, line=line, nf=nf, fv=fv, fline=fline), fits, \
        jnp.stack([new_n, nf]).astype(jnp.int32)


def _step(s: _State, c: _Consts, spec: _Spec) -> _State:
    """One batch: a round's first (3 probes per interval tried) or its "mixed" one (2 more)."""
    cap = s.line.shape[0]
    size = _pow2(3 * cap)
    k = s.g3.shape[2]
    second = s.phase == 1
    p = _prepare(s, c)
    earlier = _judge(p, s.g3, c.one)          # meaningful in the second batch only

    def rows(flags, offsets):
        src = jnp.nonzero(flags, size=cap, fill_value=cap)[0]
        safe = jnp.minimum(src, cap - 1)
        t = (p["t_star"][safe][:, None] + offsets[None, :] * p["dc"][safe][:, None]).ravel()
        line = jnp.repeat(s.line[safe], offsets.shape[0])
        pad = size - t.shape[0]
        return src, jnp.pad(t, (0, pad)), jnp.pad(line, (0, pad))

    src_a, t_a, line_a = rows(p["keep"], jnp.asarray([-1.0, 0.0, 1.0]))
    src_b, t_b, line_b = rows(earlier["mixed"], jnp.asarray([-2.0, 2.0]))
    n_keep = p["keep"].sum(dtype=jnp.int32)
    n_rows = jnp.where(second, 2 * earlier["mixed"].sum(dtype=jnp.int32), 3 * n_keep)
    answers = _ask(c, jnp.where(second, t_b, t_a), jnp.where(second, line_b, line_a), n_rows,
                   spec)
    used = jnp.arange(size) < n_rows
    finite = jnp.all(jnp.isfinite(answers) | ~used[:, None])

    g3_new = jnp.zeros((cap, 3, k)).at[src_a].set(answers[:3 * cap].reshape(cap, 3, k),
                                                  mode="drop")
    g3 = jnp.where(second, s.g3, g3_new)
    j = _judge(p, g3, c.one)
    gx = jnp.zeros((cap, 2, k)).at[src_b].set(answers[:2 * cap].reshape(cap, 2, k), mode="drop")
    done, fits, need = _commit(s, p, j, g3, gx)
    go_second = ~second & j["mixed"].any()

    before = s.rows + s.pending
    after = before + n_rows
    over = after > c.budget
    stop = jnp.select([over, ~finite, go_second | fits], [_BUDGET, _NONFINITE, _RUNNING],
                      _GROW).astype(jnp.int32)
    halted = s._replace(stop=stop, rows=jnp.where(over, before, after), need=need)
    waiting = s._replace(g3=g3, phase=jnp.int32(1), pending=after - s.rows)
    committed = done._replace(g3=g3, phase=jnp.int32(0), pending=jnp.int64(0), rows=after,
                              rounds=s.rounds + 1)
    regrow = s._replace(stop=stop, phase=jnp.int32(0), pending=jnp.int64(0), need=need)
    pick = jnp.select([over | ~finite, go_second, fits], [0, 1, 2], 3)
    return jax.tree_util.tree_map(lambda *xs: jnp.select([pick == i for i in range(3)],
                                                         list(xs[:3]), xs[3]),
                                  halted, waiting, committed, regrow)


@functools.partial(compiling.jit, static_argnames=("spec",))
def _run(s: _State, c: _Consts, spec: _Spec) -> _State:
    """Batches until the search ends, a buffer is full, the budget stops it or ``max_rounds``."""

    def finish(s):  # nothing open, or more than max_open: what is open stays unresolved
        act = jnp.arange(s.line.shape[0]) < s.n
        lines = jnp.where(act, s.line, s.unresolved.shape[0])
        return s._replace(unresolved=s.unresolved.at[lines].add(1, mode="drop"),
                          stop=jnp.int32(_DONE))

    def body(s):
        end = (s.phase == 0) & ((s.n == 0) | (s.n > c.max_open))
        return lax.cond(end, finish, lambda s: _step(s, c, spec), s)

    s = lax.while_loop(lambda s: (s.stop == _RUNNING) & (s.rounds < c.max_rounds), body, s)
    return lax.cond(s.stop == _RUNNING, finish, lambda s: s, s)   # out of rounds


@functools.partial(compiling.jit, static_argnames=("capacity", "found_capacity", "spec"))
def _start(c: _Consts, t_max, floor_frac, *, capacity, found_capacity, spec: _Spec):
    """Answers at both ends of every line (one batch) and the first interval of each."""
    n_lines = c.x0.shape[0]
    k = spec.k
    ends = jnp.stack([-t_max, -t_max + c.delta, t_max - c.delta, t_max])
    size = 1 << max(0, (4 * n_lines - 1).bit_length())
    pad = size - 4 * n_lines
    t = jnp.pad(jnp.tile(ends, n_lines), (0, pad))
    line = jnp.pad(jnp.repeat(jnp.arange(n_lines, dtype=jnp.int32), 4), (0, pad))
    g = _ask(c, t, line, 4 * n_lines, spec)[:4 * n_lines].reshape(n_lines, 4, k)
    floor = floor_frac * jnp.abs(g).max((1, 2))
    step = _divisor(c.delta, g[:, 0].shape)
    sl0 = (g[:, 1] - g[:, 0]) / step
    sr0 = (g[:, 3] - g[:, 2]) / step
    first = jnp.concatenate([jnp.stack([jnp.full(n_lines, -t_max), jnp.full(n_lines, t_max),
                                        jnp.full(n_lines, c.delta), jnp.full(n_lines, c.delta)],
                                       1), g[:, 0], g[:, 3], sl0, sr0], 1)
    iv = jnp.zeros((capacity, 4 + 4 * k)).at[:, 2:4].set(1.0).at[:n_lines].set(first)
    rows = jnp.int64(4 * n_lines)
    over = rows > c.budget
    stop = jnp.where(over, _BUDGET, jnp.where(jnp.all(jnp.isfinite(g)), _RUNNING, _NONFINITE))
    state = _State(
        n=jnp.int32(n_lines),
        line=jnp.zeros(capacity, jnp.int32).at[:n_lines].set(jnp.arange(n_lines, dtype=jnp.int32)),
        iv=iv, g3=jnp.zeros((capacity, 3, k)), phase=jnp.int32(0), pending=jnp.int64(0),
        nf=jnp.int32(0), fline=jnp.zeros(found_capacity, jnp.int32),
        fv=jnp.zeros((found_capacity, 2 + 2 * k)), unresolved=jnp.zeros(n_lines, jnp.int32),
        rows=jnp.where(over, 0, rows).astype(jnp.int64), rounds=jnp.int32(0),
        stop=stop.astype(jnp.int32), need=jnp.zeros(2, jnp.int32))
    return state, floor, sl0


def _grow(s: _State, capacity: int, found_capacity: int) -> _State:
    """The same state in larger buffers."""

    def pad(a, size):
        return jnp.pad(a, [(0, size - a.shape[0])] + [(0, 0)] * (a.ndim - 1), mode="edge")

    return s._replace(line=pad(s.line, capacity), iv=pad(s.iv, capacity),
                      g3=pad(s.g3, capacity), fline=pad(s.fline, found_capacity),
                      fv=pad(s.fv, found_capacity), stop=jnp.int32(_RUNNING))


def _pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def search_lines_jit(victim: Union[JaxFunction, ReLUNetwork], x0, v, t_max: float, *,
                     delta: float, min_delta: float, noise_factor: float, max_rounds: int,
                     max_open: int = 1 << 14, floor_frac: float = 1e-2, noise_abs: float = 0.0,
                     row_budget: Optional[int] = None, capacity: Optional[int] = None,
                     max_capacity: int = 1 << 16) -> tuple[list[LineKinks], int, bool]:
    """Finds the kinks of a JAX victim on lines ``x0[i] + t v[i]`` with the loop inside ``jit``.

    Same algorithm, decisions and results as :func:`fidelity.search.search_lines` driven
    through a counting oracle on the same victim (bit for bit on the CPU backends we test).

    Args:
        victim: the victim as an opaque :class:`~fidelity.oracle.JaxFunction` (what
            :meth:`Oracle.jax_function` hands over), or a float32/float64 ReLUNetwork. It is
            evaluated in its own dtype, as the victim evaluates itself; the search's arithmetic
            is float64. Nothing of it but its input and output widths is read.
        x0, v: ``(L, d)`` line origins and unit directions.
        t_max, delta, min_delta, noise_factor, max_rounds, max_open, floor_frac, noise_abs: as in
            :func:`~fidelity.search.search_lines`.
        row_budget: the most rows the search may use. It stops before a batch (a round's
            probes, or its extra probes of "mixed" intervals) that would pass it, as the counting
            oracle refuses such a batch, and returns ``complete=False``.
        capacity: starting number of interval slots (all lines together) and of kink slots
            (e.g. twice the units the caller knows of); default 16 per line, at least 16,
            rounded up to a power of two. Both double when full (a recompilation each time),
            so the result does not depend on it.
        max_capacity: the slots never grow past this; a round that would need more ends the
            search with its open intervals reported as unresolved.

    Returns:
        ``(lines, rows_used, complete)``: the kinks of each line; the rows whose answers were
        used (what the counting oracle would have counted, the refused batch excluded); False
        when ``row_budget`` stopped the search (``lines`` then holds the kinks committed before).

    Raises:
        ValueError: bad shapes or settings, or a victim that is neither.
        OracleError: the victim answered NaN or inf on a row the search uses.

    Example:
        >>> net = ReLUNetwork.random(0, [4, 3, 1])
        >>> x0, v = np.zeros((1, 4)), np.eye(4)[:1]
        >>> lines, rows, complete = search_lines_jit(net, x0, v, 20.0, delta=2e-5,
        ...     min_delta=2e-11, noise_factor=256, max_rounds=200)
        >>> complete, lines[0].t.size <= 3
        (True, True)
    """
    if isinstance(victim, ReLUNetwork):
        if victim.dtype not in (np.float32, np.float64):
            raise ValueError(f"the victim's weights must be float32 or float64, not "
                             f"{victim.dtype}")
        victim = JaxFunction.of_network(victim)
    if not isinstance(victim, JaxFunction):
        raise ValueError("search_lines_jit needs a JaxFunction or ReLUNetwork victim; drive a "
                         "plain callable with fidelity.search.search_lines")
    x0 = np.asarray(x0, np.float64)
    v = np.asarray(v, np.float64)
    if x0.ndim != 2 or v.shape != x0.shape or x0.shape[1] != victim.input_dim or x0.shape[0] < 1:
        raise ValueError(f"x0 and v must both have shape (L, {victim.input_dim}) with L >= 1, "
                         f"got {x0.shape} and {v.shape}")
    if max_rounds < 0 or max_open < 0 or (row_budget is not None and row_budget < 0):
        raise ValueError("max_rounds, max_open and row_budget must be non-negative")
    n_lines = x0.shape[0]
    cap = _pow2(max(16, n_lines, capacity if capacity is not None else 16 * n_lines))
    fcap = cap
    max_cap = max(_pow2(max_capacity), cap)
    sharding = batch_sharding() if jax.device_count() > 1 else None
    spec = _Spec(victim.apply, victim.dtype, victim.output_dim, sharding)

    with jax.enable_x64(True):
        c = _Consts(
            params=jax.tree_util.tree_map(jnp.asarray, victim.params),
            x0=jnp.asarray(x0), v=jnp.asarray(v), floor=jnp.zeros(n_lines),
            delta=jnp.float64(delta), min_delta=jnp.float64(min_delta),
            noise_factor=jnp.float64(noise_factor), noise_abs=jnp.float64(noise_abs),
            one=jnp.float64(1.0), max_rounds=jnp.int32(max_rounds),
            max_open=jnp.int64(max_open),
            budget=jnp.int64(np.iinfo(np.int64).max if row_budget is None else row_budget))
        state, floor, first_slope = _start(c, jnp.float64(t_max), jnp.float64(floor_frac),
                                           capacity=cap, found_capacity=fcap, spec=spec)
        c = c._replace(floor=floor)
        # each pass ends the search or doubles a buffer that stays <= max_cap: bounded
        for _ in range(2 * max_cap.bit_length() + 2):
            if int(state.stop) != _RUNNING:
                break
            state = _run(state, c, spec=spec)
            if int(state.stop) != _GROW:
                break
            need_open, need_found = (int(a) for a in state.need)
            if max(need_open, need_found) > max_cap:   # give the open intervals up
                state = _run(state._replace(stop=jnp.int32(_RUNNING)),
                             c._replace(max_open=jnp.int64(-1)), spec=spec)
                break
            cap, fcap = max(cap, _pow2(need_open)), max(fcap, _pow2(need_found))
            state = _grow(state, cap, fcap)
        host = jax.tree_util.tree_map(np.asarray, state)
        first_slope = np.asarray(first_slope)

    if host.stop == _NONFINITE:
        raise OracleError("answer contains NaN or inf")
    return (_assemble(host, x0, v, t_max, min_delta, first_slope), int(host.rows),
            bool(host.stop != _BUDGET))


def _assemble(s: _State, x0, v, t_max, min_delta, first_slope) -> list[LineKinks]:
    """Kinks per line, sorted and merged exactly as ``search_lines`` does it."""
    nf = int(s.nf)
    all_line, fv = s.fline[:nf], s.fv[:nf]
    k = first_slope.shape[1]
    all_t, all_ok = fv[:, 0], fv[:, 1] > 0.5
    all_sl, all_sr = fv[:, 2:2 + k], fv[:, 2 + k:]
    return search.collect_lines(x0, v, t_max, min_delta, first_slope, s.unresolved, all_line,
                                all_t, all_ok, all_sl, all_sr)
