"""Probability answers: a softmax classifier's outputs turned back into a ReLU network's.

A classifier that answers ``p = softmax(f(x))`` hides its logits only up to one constant per
input: ``log p_i = f_i - log sum_j exp f_j``. So the *centred* log-probabilities

    ``z_i = log p_i - mean_j log p_j = f_i - mean_j f_j``

are the outputs of a ReLU network again: the victim's, with its output layer ``[A, c]``
multiplied by the centring matrix ``C = I - 1 1^T / k``. The engine extracts that network
unchanged, from an oracle that hands it ``z`` (every row still counted); the network it returns
has logits equal to the victim's minus their mean over classes: the same probabilities, the
same labels. A hidden unit whose output weights are equal for every class moves every logit
alike; the probabilities never see it, and neither can anyone else.

What can go wrong is the logarithm:

* a probability that underflows (``exp`` of a logit gap beyond ~708 is subnormal, beyond ~745
  it is 0) has lost its bits: its log is garbage or ``-inf``. Such a row is *saturated*; its
  centred logits cannot be recovered from it. The extraction keeps its lines where the logits'
  spread stays well inside the representable range (:func:`plan_domain`, a few dozen queries
  along random rays before the search) and an oracle asked for a saturated row refuses it with
  :class:`SaturatedProbabilities`, which says how many rows were lost, instead of passing
  ``-inf`` on.
* a probability rounded to 1 (the others below 1e-16 of it) is exact to ``1e-16`` in its log:
  harmless. Probabilities rounded to ``N`` decimals are not: ``log p`` then carries an error of
  ``10^-N / (2 p)``, which grows without bound as ``p`` shrinks; rows with a probability below
  ``10^(-N/2)`` are saturated in that sense (:func:`floor`): the logs kept are good to about
  ``N/2`` decimals, and the lines stay where every class keeps that much probability.

The helpers below that read a network's weights (:func:`centre`) are for metrics and tests,
never the attack path.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from .errors import OracleError, UnsupportedArchitecture
from .network import ReLUNetwork
from .noise import EPS, NoiseFloor

# a probability below this is subnormal (or 0) in float64: its log has lost bits
P_TINY = 1e-300
# rows whose entries are all in [0, 1] and sum to 1 within this are probabilities
SUM_TOL = 1e-2
# sums within this of 1 are exact float64 (or float32) probabilities, not rounded ones
EXACT_SUM = 1e-6
# rounded probabilities (steps of q): a probability below q ** ROUNDED_POWER is saturated, so
# that the logs kept carry errors of at most q ** (1 - ROUNDED_POWER) / 2: half the digits
ROUNDED_POWER = 0.5
# the extraction's domain keeps the logits' spread (max - min over classes) below this: a
# factor ~2.3 under the float64 limit (log P_TINY = -690), for directions the plan did not probe
SAFE_SPREAD = 300.0
# rounded probabilities: the plan keeps the spread below this share of log(1 / (k floor)), the
# spread at which the least probable class reaches the floor, for directions it did not probe
ROUNDED_SPREAD_SHARE = 0.75
# rounded probabilities leaving fewer bits than this in the kept logs are refused (rounded
# logits at 16 bits, 4 decimals, are where the precision ladder stops recovering 784-32-10)
MIN_BITS = 16.0


class SaturatedProbabilities(OracleError):
    """The victim answered probabilities that underflowed (or were rounded) to where their
    logarithm is no longer the logit: those rows cannot be used. ``rows`` says how many."""

    def __init__(self, message: str, rows: int = 0):
        super().__init__(message)
        self.rows = rows


def looks_like_probabilities(y: np.ndarray) -> bool:
    """True when every row of ``y (n, k)``, ``k >= 2``, is in ``[0, 1]`` and sums to 1 (within
    :data:`SUM_TOL`: rounded probabilities too)."""
    y = np.asarray(y, np.float64)
    if y.ndim != 2 or y.shape[0] == 0 or y.shape[1] < 2:
        return False
    return bool(np.all(y >= 0) and np.all(y <= 1)
                and np.all(np.abs(y.sum(1) - 1) <= SUM_TOL))


def rounding_quantum(p: np.ndarray) -> float:
    """The decimal quantum ``10^-N`` (``N <= 12``) that every probability in ``p`` is a multiple
    of, or 0 when they are not rounded to decimals (float64 or float32 probabilities) or when
    fewer than 4 of them lie strictly between 0 and 1 (nothing to tell by)."""
    p = np.asarray(p, np.float64).ravel()
    p = p[(p > 1e-12) & (p < 1 - 1e-12)]   # 0 and 1 are multiples of every quantum
    if p.size < 4:
        return 0.0
    for n in range(1, 13):
        scaled = p * 10.0 ** n
        # a rounded p is a float64 within 1.1e-16 p of k 10^-N: k within ~2e-16 10^N
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-9 + 1e-15 * 10.0 ** n):
            return 10.0 ** -n
    return 0.0


def floor(quantum: float) -> float:
    """The smallest probability whose log is used: :data:`P_TINY` for unrounded answers,
    ``quantum ** ROUNDED_POWER`` for answers rounded to steps of ``quantum``."""
    return float(quantum ** ROUNDED_POWER) if quantum else P_TINY


def rounded_noise(nf: NoiseFloor, quantum: float) -> NoiseFloor:
    """The noise floor of centred logs of probabilities rounded to steps of ``quantum``: the
    measured one, raised to the worst kept row's. The error of ``log p`` is ``quantum / p``
    times a uniform variable of width 1, largest where ``p`` is smallest (``floor(quantum)``,
    at the domain's edge), so a measure near the origin underestimates it; the engine's noise
    model (``a + r |f|``) then takes the worst level everywhere.

    Raises:
        UnsupportedArchitecture: fewer than :data:`MIN_BITS` bits are left.
    """
    if not quantum:
        return nf
    worst = quantum / floor(quantum) / math.sqrt(12.0)
    absolute = max(nf.absolute, worst)
    ratio = max((absolute + nf.relative * f) / max(f, 1e-2 * nf.scale_far, 1e-300)
                for f in (nf.scale_near, nf.scale_far))
    bits = float(-np.log2(max(ratio, EPS)))
    if bits < MIN_BITS:
        raise UnsupportedArchitecture(
            f"probabilities rounded to steps of {quantum:g} keep about {bits:.0f} bits in their "
            f"logarithms where every class has probability {floor(quantum):.2g} or more, and "
            f"less elsewhere; direct recovery needs {MIN_BITS:.0f}: ask for more decimals, or "
            "use learning-based extraction (fidelity.learn)")
    return dataclasses.replace(nf, absolute=absolute, bits=min(bits, nf.bits), float64=False)


def spread_limit(quantum: float, classes: int) -> float:
    """The logits' spread (max - min over classes) the lines may reach: :data:`SAFE_SPREAD`
    for unrounded answers; for answers rounded to steps of ``quantum``, a share of the spread
    at which a class's probability can reach :func:`floor` (``p_min >= exp(-spread) / k``).
    Planned for 300 there, the trained 8x8 digits classifier's lines reached probabilities
    below the floor at once, and the restart (4x smaller) left them too short to cross 7 of
    its 16 units' hyperplanes."""
    if not quantum:
        return SAFE_SPREAD
    return min(SAFE_SPREAD, ROUNDED_SPREAD_SHARE * math.log(1.0 / (classes * floor(quantum))))


def centred_logits(p: np.ndarray, floor: float = P_TINY) -> tuple[np.ndarray, np.ndarray]:
    """``log p_i - mean_j log p_j`` per row, and which rows are saturated (some probability
    below ``floor``: its log is not the logit). Saturated rows hold NaN."""
    p = np.asarray(p, np.float64)
    bad = (p < floor).any(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(np.where(bad[:, None], 1.0, p))
    z = logs - logs.mean(1, keepdims=True)
    z[bad] = np.nan
    return z, bad


def interpret(y: np.ndarray, answers: str, quantum: float):
    """Reads answers ``y (n, k)`` that are probabilities (``answers="softmax"``) or may be
    (``"auto"``: decided here, rounding step included). Returns ``(answers, quantum, scores,
    saturated)``: the scores are the centred logs (NaN on saturated rows) or ``y`` itself.

    Raises:
        OracleError: ``answers="softmax"`` but the rows are not probabilities.
    """
    if answers == "auto":
        answers = "softmax" if looks_like_probabilities(y) else "logits"
        quantum = rounding_quantum(y) if answers == "softmax" else 0.0
    if answers != "softmax":
        return answers, quantum, y, np.zeros(y.shape[0], bool)
    if not looks_like_probabilities(y):
        raise OracleError("the answers should be class probabilities (rows in [0, 1] summing "
                          "to 1, at least 2 classes) and these are not")
    z, bad = centred_logits(y, floor(quantum))
    return answers, quantum, z, bad


def saturated(rows: int, total: int, quantum: float) -> SaturatedProbabilities:
    """The error for ``rows`` of ``total`` answered rows that saturated."""
    below = ("below 1e-300 (underflow)" if not quantum else
             f"below {floor(quantum):.3g} (rounded to steps of {quantum:g})")
    return SaturatedProbabilities(
        f"{rows} of {total} answered rows hold a probability {below}: their log is not the "
        "logit, so they were not used; keep the queries where the logits spread less (a "
        "smaller line_length or input_scale)", rows=rows)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably (the largest logit subtracted first)."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def softmax_victim(net: ReLUNetwork, decimals: Optional[int] = None):
    """A victim answering ``softmax(net(x))`` (rounded to ``decimals`` when given): ``(n, d)``
    to ``(n, k)`` probabilities, as a deployed classifier would."""
    def answer(x):
        p = softmax(np.asarray(net(np.asarray(x, np.float64)), np.float64))
        return p if decimals is None else np.round(p, decimals)
    return answer


def centre(net: ReLUNetwork) -> ReLUNetwork:
    """``net`` with its output layer centred over classes (logits minus their mean): what an
    extraction from probabilities recovers. Ground truth: for metrics and tests only."""
    w, b = list(net.weights), list(net.biases)
    w[-1] = w[-1] - w[-1].mean(0, keepdims=True)
    b[-1] = b[-1] - b[-1].mean()
    return ReLUNetwork(w, b)


def plan_domain(query, d: int, input_scale: float, t_max: float, rng: np.random.Generator,
                rays: int = 8, steps: int = 12,
                limit: float = SAFE_SPREAD) -> tuple[float, float, dict]:
    """Where lines can go before the probabilities saturate.

    Along ``rays`` random directions, the centred logits are asked at radii growing
    geometrically up to ``|x0| + t_max`` (``|x0| ~ input_scale sqrt(d)``, the lines' origins);
    the largest radius at which the logits' spread stays below ``limit`` (:func:`spread_limit`)
    on every ray bounds the lines. Returns ``(t_max, input_scale, info)``: both unchanged when
    the whole default domain is safe; otherwise the lines are shortened, and when even the
    lines' origins are too far out, the origins are drawn closer to 0 too.

    Raises:
        OracleError: the logits' spread is beyond ``limit`` already within
            ``input_scale / 100`` of the origin (no domain is left).
    """
    origin = input_scale * math.sqrt(d)
    far = origin + t_max
    radii = np.geomspace(origin * 1e-2, far, steps)
    u = rng.normal(size=(rays, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    pts = (radii[:, None, None] * u[None]).reshape(-1, d)
    z, bad = query(pts)
    spread = np.where(bad, np.inf, np.ptp(np.where(bad[:, None], 0.0, z), axis=1))
    worst = spread.reshape(steps, rays).max(1)
    ok = worst <= limit
    info = dict(queries=int(pts.shape[0]), radii=radii.tolist(), spread=worst.tolist())
    if ok.all():
        return t_max, input_scale, info
    if not ok[0]:
        raise OracleError(
            f"the victim's logits spread by {worst[0]:.3g} (more than {limit:.3g}) already "
            f"at radius {radii[0]:.3g}: its probabilities saturate everywhere the lines would "
            "go" + ("; pass a smaller input_scale" if limit >= SAFE_SPREAD else
                    " (a class falls below what its rounding lets a log recover); pass a "
                    "smaller input_scale, or ask for more decimals"))
    # the spread is piecewise linear in the radius: interpolated to the limit between the last
    # safe radius and the first unsafe one (extrapolated from 0 where that one saturated)
    i = int(np.argmin(ok)) - 1
    r_safe = radii[i]
    if np.isfinite(worst[i + 1]):
        r_safe = radii[i] + (limit - worst[i]) * (radii[i + 1] - radii[i]) / (
            worst[i + 1] - worst[i])
    elif worst[i] > 0:
        r_safe = min(radii[i + 1], radii[i] * limit / worst[i])
    if r_safe >= 3 * origin:
        new_t, new_scale = r_safe - origin, input_scale
    else:                        # the origins go closer in: a third of the safe radius
        new_scale = r_safe / (3 * math.sqrt(d))
        new_t = r_safe - new_scale * math.sqrt(d)
    info.update(safe_radius=float(r_safe))
    return float(min(new_t, t_max)), float(min(new_scale, input_scale)), info
