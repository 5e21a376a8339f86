"""A JSON prediction service around a victim, to practise extraction against a real API.

``fidelity serve VICTIM.npz`` (or :func:`serve`) runs it with uvicorn; :func:`create_app` builds
the Starlette app and :class:`BackgroundServer` runs one in a thread (tests, notebooks). Needs the
``serve`` extra: ``pip install 'fidelity[serve]'``.

Endpoints:

* ``POST /predict`` ``{"inputs": [[...], ...]}`` -> ``{"outputs": [[...], ...]}``; the inputs
  may instead come as ``{"inputs_b64": BASE64, "dtype": "<f8", "shape": [n, d]}`` (the raw
  little-endian float64 bytes: exact, and ~30x cheaper to encode than JSON numbers). The answer is
  shaped by the output mode: ``logits`` (float64, exact), ``float32`` (rounded to float32),
  ``round:N`` (rounded to N decimals), ``label`` (the argmax class, or ``f > 0`` for one output,
  as JSON integers), ``softmax`` (class probabilities, as most deployed classifiers answer) or
  ``softmax:N`` (probabilities rounded to N decimals).
* ``GET /info``: ``input_dim``, ``output_dim``, ``output`` mode, ``encodings``, limits (no key
  needed).
* ``GET /usage``: the caller's key's ``rows``, ``requests``, ``quota`` and ``remaining``.

Keys go in ``Authorization: Bearer KEY`` (or ``X-API-Key``). Each key's answered rows are counted
and a request that would pass ``quota`` is refused whole with 429 ``quota_exhausted``; a request
above ``rate`` requests per second gets 429 ``rate_limited`` with ``Retry-After`` (transient). An
``Idempotency-Key`` header makes a retried request return the first answer without charging it
again. Errors are ``{"error": {"code", "message"}}``: 400 ``bad_json``, 401 ``missing_key``,
403 ``bad_key``, 413 ``too_many_bytes`` / ``too_many_rows``, 422 ``bad_request``,
``bad_shape``, ``not_numeric``, ``not_finite``, ``idempotency_key_reused``.

Parsing and the victim run in a thread pool (small requests inline), so several clients are
served at once; counting
happens on the event loop under a lock, so counts are exact. One process holds the counts
(several worker processes would each count apart), which is what a practice server needs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .probabilities import softmax

log = logging.getLogger("fidelity.server")

ANONYMOUS = "anonymous"
_INLINE_BYTES = 16 << 10    # smaller requests are parsed and answered on the event loop


def parse_output_mode(mode: str) -> str:
    """Checks an output mode (``logits``, ``float32``, ``round:N``, ``label``, ``softmax`` or
    ``softmax:N``); returns it."""
    if mode in ("logits", "float32", "label", "softmax"):
        return mode
    if mode.startswith(("round:", "softmax:")):
        try:
            digits = int(mode.split(":", 1)[1])
        except ValueError:
            digits = -1
        if 0 <= digits <= 17:
            return mode
    raise ValueError(f"output mode must be logits, float32, round:N, label, softmax or "
                     f"softmax:N (0 <= N <= 17); got {mode!r}")


def shape_outputs(y: np.ndarray, mode: str) -> list:
    """What the service answers for raw scores ``y`` ``(n, k)`` in output ``mode``."""
    y = np.asarray(y, np.float64)
    if mode == "logits":
        return y.tolist()
    if mode == "float32":
        return y.astype(np.float32).tolist()
    if mode == "label":
        labels = (y[:, 0] > 0) if y.shape[1] == 1 else y.argmax(1)
        return labels.astype(int).tolist()
    if mode.startswith("softmax"):
        p = softmax(y)
        return (p if mode == "softmax" else np.round(p, int(mode.split(":", 1)[1]))).tolist()
    return np.round(y, int(mode.split(":", 1)[1])).tolist()


class _Reject(Exception):
    """An HTTP error answer, raised inside request handling."""

    def __init__(self, status: int, code: str, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def response(self) -> JSONResponse:
        err = {"code": self.code, "message": self.message}
        headers = {}
        if self.retry_after is not None:
            err["retry_after"] = round(self.retry_after, 3)
            headers["Retry-After"] = str(max(1, int(np.ceil(self.retry_after))))
        return JSONResponse({"error": err}, status_code=self.status, headers=headers)


@dataclass
class KeyUsage:
    """What one key has used. ``rows`` counts answered rows (charged once, replays excluded)."""

    rows: int = 0
    requests: int = 0
    replays: int = 0
    refused: int = 0
    tokens: float = 0.0
    stamp: float = 0.0
    cache: OrderedDict = field(default_factory=OrderedDict)   # idempotency key -> (digest, future)


class Ledger:
    """Per-key counts, quota, rate limit and idempotency cache; every method is thread-safe.

    Args:
        keys: accepted API keys; empty means an open service (everyone is ``"anonymous"``).
        quota: rows each key may be answered (``None``: unlimited).
        rate: requests per second each key may send (``None``: unlimited), with bursts of
            ``burst`` requests.
        cache_size: answers kept per key for idempotent retries.
    """

    def __init__(self, keys: Sequence[str] = (), quota: Optional[int] = None,
                 rate: Optional[float] = None, burst: Optional[float] = None,
                 cache_size: int = 256, clock=time.monotonic):
        if quota is not None and quota < 0:
            raise ValueError("quota must be >= 0 rows")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0 requests per second")
        self.keys = tuple(keys)
        self.quota = quota
        self.rate = rate
        self.burst = max(1.0, float(burst if burst is not None else (rate or 1.0)))
        self.cache_size = int(cache_size)
        self._clock = clock
        self._lock = threading.Lock()
        self._usage: dict[str, KeyUsage] = {}

    def authenticate(self, token: Optional[str]) -> str:
        """The key's name for counting; raises 401/403 answers for missing or unknown keys."""
        if not self.keys:
            return ANONYMOUS
        if not token:
            raise _Reject(401, "missing_key", "send your key as 'Authorization: Bearer KEY'")
        for key in self.keys:
            if hmac.compare_digest(key.encode(), token.encode()):
                return key
        raise _Reject(403, "bad_key", "unknown API key")

    def _get(self, key: str) -> KeyUsage:
        u = self._usage.get(key)
        if u is None:
            u = self._usage[key] = KeyUsage(tokens=self.burst, stamp=self._clock())
        return u

    def cached(self, key: str, idem: str, digest: bytes):
        """The pending or finished answer of an earlier request with this idempotency key."""
        with self._lock:
            hit = self._get(key).cache.get(idem)
        if hit is None:
            return None
        if hit[0] != digest:
            raise _Reject(422, "idempotency_key_reused",
                          "this Idempotency-Key was used for a different request body")
        return hit[1]

    def admit(self, key: str, rows: int, idem: Optional[str], digest: bytes, future):
        """Checks the rate limit and reserves ``rows`` of quota, all at once or not at all."""
        with self._lock:
            u = self._get(key)
            if self.rate is not None:
                now = self._clock()
                u.tokens = min(self.burst, u.tokens + (now - u.stamp) * self.rate)
                u.stamp = now
                if u.tokens < 1.0:
                    u.refused += 1
                    raise _Reject(429, "rate_limited",
                                  f"more than {self.rate:g} requests per second; retry later",
                                  retry_after=(1.0 - u.tokens) / self.rate)
            if self.quota is not None and u.rows + rows > self.quota:
                u.refused += 1
                raise _Reject(429, "quota_exhausted",
                              f"{rows} rows would pass this key's quota of {self.quota} "
                              f"({self.quota - u.rows} left)")
            if self.rate is not None:
                u.tokens -= 1.0
            u.rows += rows
            if idem is not None:
                u.cache[idem] = (digest, future)
                while len(u.cache) > self.cache_size:
                    u.cache.popitem(last=False)

    def settle(self, key: str, rows: int, idem: Optional[str], ok: bool) -> None:
        """Records an answered request, or gives back the rows of one that failed."""
        with self._lock:
            u = self._get(key)
            if ok:
                u.requests += 1
            else:
                u.rows -= rows
                if idem is not None:
                    u.cache.pop(idem, None)

    def replayed(self, key: str) -> None:
        with self._lock:
            self._get(key).replays += 1

    def usage(self, key: str = ANONYMOUS) -> dict:
        """A snapshot of one key's counts."""
        with self._lock:
            u = self._get(key)
            return dict(rows=u.rows, requests=u.requests, replays=u.replays, refused=u.refused,
                        quota=self.quota,
                        remaining=None if self.quota is None else self.quota - u.rows)

    def total_rows(self) -> int:
        with self._lock:
            return sum(u.rows for u in self._usage.values())


def _key_label(key: str) -> str:
    return key if key == ANONYMOUS else "key#" + hashlib.sha256(key.encode()).hexdigest()[:8]


def create_app(victim, *, api_keys: Sequence[str] = (), quota: Optional[int] = None,
               output: str = "logits", max_rows: int = 4096, max_bytes: int = 64 << 20,
               rate: Optional[float] = None, burst: Optional[float] = None) -> Starlette:
    """Builds the prediction service for ``victim``.

    Args:
        victim: a :class:`~fidelity.ReLUNetwork` (or an object with ``input_dim``,
            ``output_dim`` and a batched ``__call__``).
        api_keys: accepted keys; none means an open service.
        quota: rows answered per key before 429 ``quota_exhausted``.
        output: ``logits``, ``float32``, ``round:N``, ``label``, ``softmax`` or ``softmax:N``.
        max_rows: most rows in one request (413 ``too_many_rows`` above).
        max_bytes: largest request body (413 ``too_many_bytes`` above).
        rate: requests per second per key (429 ``rate_limited`` above), ``burst`` at once.

    Returns:
        The app; ``app.state.ledger`` is its :class:`Ledger` (counts per key).
    """
    output = parse_output_mode(output)
    if max_rows < 1 or max_bytes < 1:
        raise ValueError("max_rows and max_bytes must be positive")
    d, k = int(victim.input_dim), int(victim.output_dim)
    ledger = Ledger(api_keys, quota, rate, burst)
    limits = dict(max_rows=int(max_rows), max_bytes=int(max_bytes))

    def token(request: Request) -> Optional[str]:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return request.headers.get("x-api-key")

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise _Reject(400, "bad_request", "Content-Length is not a number") from None
            if declared > max_bytes:
                raise _Reject(413, "too_many_bytes",
                              f"request body of {declared} bytes is above {max_bytes}")
        parts, total = [], 0
        async for part in request.stream():
            total += len(part)
            if total > max_bytes:
                raise _Reject(413, "too_many_bytes", f"request body is above {max_bytes} bytes")
            parts.append(part)
        return b"".join(parts)

    def parse(body: bytes) -> np.ndarray:
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Reject(400, "bad_json", f"body is not JSON: {exc}") from None
        if isinstance(obj, dict) and "inputs_b64" in obj:
            return decode_b64(obj)
        if not isinstance(obj, dict) or "inputs" not in obj:
            raise _Reject(422, "bad_request", 'expected {"inputs": [[...], ...]}')
        inputs = obj["inputs"]
        if not isinstance(inputs, list):
            raise _Reject(422, "bad_shape", f"inputs must be a list of rows of {d} numbers")
        if len(inputs) > max_rows:
            raise _Reject(413, "too_many_rows", f"{len(inputs)} rows; at most {max_rows} "
                          "per request")
        if not inputs:
            return np.zeros((0, d))
        try:
            x = np.array(inputs)
        except (ValueError, TypeError):
            raise _Reject(422, "bad_shape", f"inputs must be rows of {d} numbers") from None
        if x.dtype.kind not in "iuf":
            raise _Reject(422, "not_numeric" if x.ndim == 2 else "bad_shape",
                          f"inputs must be rows of {d} numbers")
        if x.ndim != 2 or x.shape[1] != d:
            raise _Reject(422, "bad_shape", f"inputs have shape {x.shape}, expected (n, {d})")
        return finite(x.astype(np.float64))

    def finite(x: np.ndarray) -> np.ndarray:
        if not np.isfinite(x).all():
            raise _Reject(422, "not_finite", "inputs contain NaN or infinity")
        return x

    def decode_b64(obj: dict) -> np.ndarray:
        shape = obj.get("shape")
        if (obj.get("dtype", "<f8") != "<f8" or not isinstance(shape, list) or len(shape) != 2
                or not all(isinstance(v, int) and v >= 0 for v in shape)):
            raise _Reject(422, "bad_request", 'expected {"inputs_b64": ..., "dtype": "<f8", '
                          '"shape": [n, d]}')
        if shape[0] > max_rows:
            raise _Reject(413, "too_many_rows", f"{shape[0]} rows; at most {max_rows} "
                          "per request")
        if shape[1] != d:
            raise _Reject(422, "bad_shape", f"inputs have shape {tuple(shape)}, expected "
                          f"(n, {d})")
        try:
            raw = base64.b64decode(obj["inputs_b64"], validate=True)
        except (ValueError, TypeError):
            raise _Reject(422, "bad_request", "inputs_b64 is not base64") from None
        if len(raw) != 8 * shape[0] * d:
            raise _Reject(422, "bad_shape", f"inputs_b64 holds {len(raw)} bytes, not "
                          f"{8 * shape[0] * d} for shape {tuple(shape)}")
        return finite(np.frombuffer(raw, "<f8").reshape(shape[0], d).astype(np.float64))

    def answer(x: np.ndarray) -> bytes:
        y = np.asarray(victim(x), np.float64).reshape(x.shape[0], k)
        return json.dumps({"outputs": shape_outputs(y, output)}).encode()

    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        key, rows, status, note = ANONYMOUS, 0, 500, ""
        try:
            key = ledger.authenticate(token(request))
            body = await read_body(request)
            idem = request.headers.get("idempotency-key")
            digest = hashlib.blake2b(body, digest_size=16).digest()
            if idem is not None:
                pending = ledger.cached(key, idem, digest)
                if pending is not None:
                    payload = await asyncio.shield(pending)
                    if payload is None:
                        raise _Reject(503, "retry", "the first attempt failed; retry")
                    ledger.replayed(key)
                    status, note = 200, " replay"
                    return Response(payload, media_type="application/json")
            small = len(body) <= _INLINE_BYTES      # not worth a thread hop
            x = parse(body) if small else await run_in_threadpool(parse, body)
            rows = x.shape[0]
            if rows == 0:
                status = 200
                return JSONResponse({"outputs": []})
            future = asyncio.get_running_loop().create_future()
            ledger.admit(key, rows, idem, digest, future)
            try:
                payload = answer(x) if small else await run_in_threadpool(answer, x)
            except BaseException:   # failed or cancelled: give the rows back
                ledger.settle(key, rows, idem, ok=False)
                future.set_result(None)
                raise
            ledger.settle(key, rows, idem, ok=True)
            future.set_result(payload)
            status = 200
            return Response(payload, media_type="application/json")
        except _Reject as rej:
            status, note = rej.status, " " + rej.code
            return rej.response()
        except Exception as exc:  # never crash the service: a 500 with the reason
            log.exception("POST /predict failed")
            return _Reject(500, "internal", f"{type(exc).__name__}: {exc}").response()
        finally:
            log.info("POST /predict %s rows=%d status=%d%s %.1f ms", _key_label(key), rows,
                     status, note, 1000 * (time.perf_counter() - t0))

    async def info(request: Request) -> Response:
        return JSONResponse(dict(input_dim=d, output_dim=k, output=output, quota=quota,
                                 rate=rate, encodings=["json", "b64"], **limits))

    async def usage(request: Request) -> Response:
        try:
            key = ledger.authenticate(token(request))
        except _Reject as rej:
            return rej.response()
        return JSONResponse(dict(key=_key_label(key), **ledger.usage(key)))

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]),
                            Route("/info", info, methods=["GET"]),
                            Route("/usage", usage, methods=["GET"])])
    app.state.ledger = ledger
    return app


class BackgroundServer:
    """Runs an ASGI app with uvicorn in a daemon thread, on a free port by default.

    Args:
        app: the app (e.g. from :func:`create_app`).
        host: address to bind; loopback by default.
        port: port to bind; 0 picks a free one.
        startup_timeout: seconds to wait for the server to accept connections.

    Example:
        >>> with BackgroundServer(create_app(victim)) as srv:     # doctest: +SKIP
        ...     oracle = fidelity.HTTPOracle(srv.url + "/predict")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout: float = 30.0):
        import uvicorn

        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        # log_config=None: leave the host program's logging alone (uvicorn's own config would
        # replace every handler); its loggers propagate to the root logger instead
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                                lifespan="off", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs=dict(sockets=[self._sock]), daemon=True,
                                        name=f"fidelity-server-{self.port}")
        self._timeout = startup_timeout

    def start(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {self._timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Asks the server to finish and waits (bounded) for its thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(victim, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          **options) -> None:
    """Serves ``victim`` until interrupted (blocking); ``options`` go to :func:`create_app`."""
    import uvicorn

    app = create_app(victim, **options)
    uvicorn.run(app, host=host, port=port, log_config=None, log_level=log_level,
                access_log=False, timeout_keep_alive=30)
