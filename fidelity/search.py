"""Stage 1: critical points (ReLU kinks) of the victim along lines ``x(t) = x0 + t v``.

Along a line the victim is piecewise linear in ``t``; each hidden unit adds at most one kink.
An interval ``[tl, tr]`` is described by the values at its ends and the one-sided slopes there.
If the slopes agree and the values fit one line, the interval holds no kink. Otherwise the two
end lines are intersected (two-sided linear extrapolation) and the candidate ``t*`` is verified
with three queries: the value must lie on both end lines *and* the slopes just left and right of
``t*`` must equal the end slopes (checking the value alone can confirm a false kink). A failed
candidate splits the interval there. All open intervals of all lines advance together, so each
round is one batched query; the number of rounds is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

EPS = np.finfo(np.float64).eps
HINT_STEP = 1 / 64   # a hint's inner answers lie this share of the search's step beside it
HINT_SLACK = 1e-2    # times that, between a hint and where the pieces either side meet


@dataclass(frozen=True)
class LineKinks:
    """Kinks found on one line. ``t`` is sorted; ``verified[i]`` is False for kinks that were
    only located to within the search resolution."""

    x0: np.ndarray
    v: np.ndarray
    t_max: float
    t: np.ndarray
    verified: np.ndarray
    unresolved: int  # intervals given up (round bound or resolution) that still held a kink
    slopes: np.ndarray  # (m + 1, k) slope along v of each linear piece (NaN where unknown)
    at_hints: int = 0   # kinks found where a hint said (see search_lines)


def _tolerances(scale, noise_factor):
    return noise_factor * EPS * scale


def search_lines(query: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, v: np.ndarray,
                 t_max: float, *, delta: float, min_delta: float, noise_factor: float,
                 max_rounds: int, max_open: int = 1 << 14,
                 floor_frac: float = 1e-2, noise_abs: float = 0.0,
                 hints: Optional[list] = None) -> list[LineKinks]:
    """Finds the kinks of ``query`` on each line ``x0[i] + t v[i]``, ``t`` in ``[-t_max, t_max]``.

    Args:
        query: the counting oracle (rows in, answers ``(n, k)`` out).
        x0, v: ``(L, d)`` line origins and unit directions.
        delta: step for one-sided slopes; shrunk to ``width / 8`` in narrow intervals, never
            below ``min_delta``.
        noise_factor: answers are trusted to ``noise_factor * eps * |f| + noise_abs``.
        max_rounds: bound on the number of batched rounds.
        max_open: bound on the open intervals of a round (all lines); past it the search stops
            and reports the open intervals as unresolved.
        floor_frac: rounding noise is relative to the size of the terms the victim adds up,
            not to the answer (which cancels to ~0 where the output changes sign): answers are
            taken as at least ``floor_frac`` times the largest answer at the line's ends.
        hints: per line, where a model predicts kinks (``t``, any order), or None. An open
            interval that holds a hint well inside is probed around the hint nearest its
            middle instead of at its extrapolated kink: two answers either side (a step
            and ``HINT_STEP`` of one away) give both pieces' lines, and where they meet,
            next to the hint, is the kink (four queries, where an unknown kink costs three
            per try and tries fail while an interval holds several).
    """
    n_lines, d = x0.shape

    def ask(line, t):
        return query(x0[line] + t[:, None] * v[line])

    lines = np.arange(n_lines)
    ends = np.array([-t_max, -t_max + delta, t_max - delta, t_max])
    g = ask(np.repeat(lines, 4), np.tile(ends, n_lines)).reshape(n_lines, 4, -1)
    floor = floor_frac * np.abs(g).max((1, 2))
    # open intervals as parallel arrays
    line = lines.copy()
    tl = np.full(n_lines, -t_max)
    tr = np.full(n_lines, t_max)
    gl, gr = g[:, 0], g[:, 3]
    sl = (g[:, 1] - g[:, 0]) / delta
    sr = (g[:, 3] - g[:, 2]) / delta
    dl = np.full(n_lines, delta)
    dr = np.full(n_lines, delta)

    found_line, found_t, found_ok, found_sl, found_sr = [], [], [], [], []
    first_slope = sl.copy()
    unresolved = np.zeros(n_lines, dtype=int)
    at_hints = np.zeros(n_lines, dtype=int)
    if hints is not None:            # each hint is tried once
        hints = [np.asarray(h, np.float64).ravel() for h in hints]
        spent = [np.zeros(h.size, bool) for h in hints]

    for _ in range(max_rounds):
        if line.size == 0 or line.size > max_open:
            np.add.at(unresolved, line, 1)
            break
        scale = np.maximum(np.maximum(np.abs(gl).max(1), np.abs(gr).max(1)), floor[line])
        noise = _tolerances(np.maximum(scale, 1e-300), noise_factor) + noise_abs
        width = tr - tl
        slope_tol = 4 * noise * (1 / dl + 1 / dr)
        den = sl - sr
        lin_err = np.maximum(np.abs(gr - gl - sl * width[:, None]).max(1),
                             np.abs(gr - gl - sr * width[:, None]).max(1))
        val_tol = 4 * noise * (1 + width / np.minimum(dl, dr))
        linear = (np.abs(den).max(1) <= slope_tol) & (lin_err <= val_tol)

        dc = np.minimum(delta, width / 8)
        tiny = (dc < min_delta) & ~linear
        if tiny.any():  # below resolution: keep it as an unverified kink
            found_line.append(line[tiny])
            found_t.append(0.5 * (tl[tiny] + tr[tiny]))
            found_ok.append(np.zeros(tiny.sum(), bool))
            found_sl.append(np.full_like(sl[tiny], np.nan))
            found_sr.append(np.full_like(sr[tiny], np.nan))
        keep = ~linear & ~tiny
        line, tl, tr, gl, gr, sl, sr, dl, dr, den, dc, noise, slope_tol = (
            a[keep] for a in (line, tl, tr, gl, gr, sl, sr, dl, dr, den, dc, noise, slope_tol))
        if line.size == 0:
            break

        # two-sided linear extrapolation, least squares over the outputs
        num = (gr - gl) + sl * tl[:, None] - sr * tr[:, None]
        den2 = (den * den).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_star = (num * den).sum(1) / den2
        extrap = (np.sqrt(den2) > slope_tol) & np.isfinite(t_star)
        extrap &= (t_star > tl + 2 * dc) & (t_star < tr - 2 * dc)
        t_star = np.where(extrap, t_star, 0.5 * (tl + tr))
        hinted = np.zeros(line.size, bool)
        if hints is not None:
            t_star, hinted = _hinted(hints, spent, line, tl, tr, dc, delta, t_star)

        # one batch: three answers per plain candidate, four around each hint
        plain_c = ~hinted
        pts = np.stack([t_star - dc, t_star, t_star + dc], 1)[plain_c]
        hpts = (t_star[hinted, None] + dc[hinted, None]
                * np.array([-1.0, -HINT_STEP, HINT_STEP, 1.0])[None])
        both = ask(np.concatenate([np.repeat(line[plain_c], 3), np.repeat(line[hinted], 4)]),
                   np.concatenate([pts.ravel(), hpts.ravel()]))
        n_plain = 3 * int(plain_c.sum())
        if hinted.any():
            hq = both[n_plain:].reshape(int(hinted.sum()), 4, both.shape[-1])
            found, parts_h = _at_hints(line[hinted], tl[hinted], tr[hinted], gl[hinted],
                                       gr[hinted], sl[hinted], sr[hinted], dl[hinted],
                                       dr[hinted], t_star[hinted], dc[hinted], hq,
                                       noise[hinted])
            for lst, col in zip((found_line, found_t, found_ok, found_sl, found_sr), found):
                lst.append(col)
            np.add.at(at_hints, found[0], 1)
            keep = ~hinted
            line, tl, tr, gl, gr, sl, sr, dl, dr, den, dc, noise, slope_tol, t_star, extrap = (
                a[keep] for a in (line, tl, tr, gl, gr, sl, sr, dl, dr, den, dc, noise,
                                  slope_tol, t_star, extrap))
        else:
            parts_h = []
        gq = both[:n_plain].reshape(line.size, 3, both.shape[-1])
        gm, gs, gp = gq[:, 0], gq[:, 1], gq[:, 2]
        ls = (gs - gm) / dc[:, None]
        rs = (gp - gs) / dc[:, None]

        tol_l = 4 * noise * (1 / dc + 1 / dl)
        tol_r = 4 * noise * (1 / dc + 1 / dr)
        on_left = np.abs(gs - gl - sl * (t_star - tl)[:, None]).max(1) \
            <= 4 * noise * (1 + (t_star - tl) / dl)
        on_right = np.abs(gs - gr - sr * (t_star - tr)[:, None]).max(1) \
            <= 4 * noise * (1 + (tr - t_star) / dr)
        ok = (extrap & on_left & on_right
              & (np.abs(ls - sl).max(1) <= tol_l) & (np.abs(rs - sr).max(1) <= tol_r))
        if ok.any():
            found_line.append(line[ok])
            found_t.append(t_star[ok])
            found_ok.append(np.ones(ok.sum(), bool))
            found_sl.append(sl[ok])
            found_sr.append(sr[ok])
        s = ~ok
        # A kink within dc of t* makes one of ls, rs a secant across it: such a slope must never
        # become an interval's end slope. Measure clean slopes one step further out instead and
        # cut out the micro-interval [t* - dc, t* + dc] that holds the kink.
        mixed = s & (np.abs(ls - rs).max(1) > 4 * noise * 2 / dc)
        plain = s & ~mixed
        parts = parts_h + [
            # plain split at t*: left child [tl, t*], right child [t*, tr]
            (line[plain], tl[plain], t_star[plain], gl[plain], gs[plain], sl[plain], ls[plain],
             dl[plain], dc[plain]),
            (line[plain], t_star[plain], tr[plain], gs[plain], gr[plain], rs[plain], sr[plain],
             dc[plain], dr[plain]),
        ]
        if mixed.any():
            lm, tm, dm = line[mixed], t_star[mixed], dc[mixed]
            gx = ask(np.repeat(lm, 2), np.stack([tm - 2 * dm, tm + 2 * dm], 1).ravel())
            gx = gx.reshape(lm.size, 2, -1)
            s_left = (gm[mixed] - gx[:, 0]) / dm[:, None]
            s_right = (gx[:, 1] - gp[mixed]) / dm[:, None]
            parts += [
                (lm, tl[mixed], tm - dm, gl[mixed], gm[mixed], sl[mixed], s_left, dl[mixed], dm),
                (lm, tm - dm, tm + dm, gm[mixed], gp[mixed], s_left, s_right, dm, dm),
                (lm, tm + dm, tr[mixed], gp[mixed], gr[mixed], s_right, sr[mixed], dm, dr[mixed]),
            ]
        line, tl, tr, gl, gr, sl, sr, dl, dr = (np.concatenate(cols) for cols in zip(*parts))
    else:
        np.add.at(unresolved, line, 1)

    all_line = np.concatenate(found_line) if found_line else np.zeros(0, int)
    all_t = np.concatenate(found_t) if found_t else np.zeros(0)
    all_ok = np.concatenate(found_ok) if found_ok else np.zeros(0, bool)
    k = first_slope.shape[1]
    all_sl = np.concatenate(found_sl) if found_sl else np.zeros((0, k))
    all_sr = np.concatenate(found_sr) if found_sr else np.zeros((0, k))
    lines = collect_lines(x0, v, t_max, min_delta, first_slope, unresolved, all_line, all_t,
                          all_ok, all_sl, all_sr)
    return [replace(k, at_hints=int(n)) for k, n in zip(lines, at_hints)]


def _hinted(hints: list, spent: list, line: np.ndarray, tl: np.ndarray, tr: np.ndarray,
            dc: np.ndarray, delta: float, t_star: np.ndarray) -> tuple:
    """``(candidates, hinted)``: per open interval, the hint nearest its middle (not tried
    yet; marked ``spent``) where one lies at least three steps inside an interval wide enough
    for the full step ``delta``."""
    t_star, hinted = t_star.copy(), np.zeros(line.size, bool)
    for i in np.flatnonzero(dc >= delta):
        h, used = hints[line[i]], spent[line[i]]
        inside = np.flatnonzero((h > tl[i] + 3 * dc[i]) & (h < tr[i] - 3 * dc[i]) & ~used)
        if inside.size:
            j = inside[np.argmin(np.abs(h[inside] - 0.5 * (tl[i] + tr[i])))]
            used[j] = True
            t_star[i] = h[j]
            hinted[i] = True
    return t_star, hinted


def _at_hints(line, tl, tr, gl, gr, sl, sr, dl, dr, t_h, dc, hq, noise) -> tuple:
    """The kinks found around hints (answers ``hq`` at ``t_h + (-1, -e, e, 1) dc``, ``e`` =
    ``HINT_STEP``: slopes over nearly the search's step, and two answers close beside the
    hint) and the intervals left open. A kink where the two pieces' lines meet within
    ``HINT_SLACK`` times ``e dc`` of the hint: the interval is split around it. No kink (one
    line through all four answers): split there too. Anything else (a kink of another unit
    within a step, whose secant moves where the lines meet and must never become an
    interval's end slope): the interval stays as it was, for the plain search. A kink of
    another unit closer to the hint than ``e dc``, with a small jump, moves where the lines
    meet too little to tell and is taken in: the short inner step makes that rare. (A
    model's kinks lie about 1e-7 of a step from the victim's, 1e-3 at worst. With all four
    answers a step apart, random 40-20-10-10-1 s81 lost the kink of a layer-3 unit 5e-5
    beside a known one, and s25 kept a kink 3e-6 off.)"""
    near = HINT_STEP * dc
    ga, gb, gc, gd = (hq[:, i] for i in range(4))
    s_left, s_right = (gb - ga) / (dc - near)[:, None], (gd - gc) / (dc - near)[:, None]
    den = s_left - s_right
    num = (gc - gb) + s_left * (t_h - near)[:, None] - s_right * (t_h + near)[:, None]
    den2 = (den * den).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_k = (num * den).sum(1) / den2
    apart = np.sqrt(den2) > 4 * noise * 2 / (dc - near)
    # the two lines through the hint agree (all outputs) where they meet
    meet = np.abs(gb + s_left * (t_k - t_h + near)[:, None]
                  - gc - s_right * (t_k - t_h - near)[:, None]).max(1) <= 8 * noise
    ok = apart & np.isfinite(t_k) & (np.abs(t_k - t_h) <= HINT_SLACK * near) & meet
    flat = ~apart & (np.abs(gc - gb - s_left * 2 * near[:, None]).max(1) <= 8 * noise)
    found = (line[ok], t_k[ok], np.ones(int(ok.sum()), bool), s_left[ok], s_right[ok])
    cut, same = ok | flat, ~(ok | flat)
    step = dc - near
    parts = [
        (line[cut], tl[cut], (t_h - near)[cut], gl[cut], gb[cut], sl[cut], s_left[cut],
         dl[cut], step[cut]),
        (line[cut], (t_h + near)[cut], tr[cut], gc[cut], gr[cut], s_right[cut], sr[cut],
         step[cut], dr[cut]),
        (line[same], tl[same], tr[same], gl[same], gr[same], sl[same], sr[same], dl[same],
         dr[same]),
    ]
    return found, parts


def collect_lines(x0, v, t_max, min_delta, first_slope, unresolved, all_line, all_t, all_ok,
                  all_sl, all_sr) -> list[LineKinks]:
    """Per line: the kinks found (any order, tagged by line) sorted, duplicates closer than
    the resolution merged, and the slope of each piece."""
    out = []
    for i in range(x0.shape[0]):
        sel = all_line == i
        order = np.argsort(all_t[sel])
        t, okv = all_t[sel][order], all_ok[sel][order]
        ksl, ksr = all_sl[sel][order], all_sr[sel][order]
        if t.size > 1:  # merge duplicates closer than the resolution
            keep = np.concatenate([[True], np.diff(t) > 2 * min_delta])
            t, okv, ksl, ksr = t[keep], okv[keep], ksl[keep], ksr[keep]
        # slope of each piece: right of kink j-1 and left of kink j must agree; keep the first
        slopes = np.concatenate([first_slope[i][None], ksr])
        if t.size:
            slopes[0] = np.where(np.isnan(ksl[0]), np.nan, slopes[0])
        out.append(LineKinks(x0=x0[i], v=v[i], t_max=t_max, t=t, verified=okv,
                             unresolved=int(unresolved[i]), slopes=slopes))
    return out
