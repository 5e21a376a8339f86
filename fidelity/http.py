"""An :class:`~fidelity.Oracle` for a victim behind an HTTP JSON prediction API.

The protocol is the one :mod:`fidelity.server` speaks (and any service can imitate):

* ``POST /predict`` with ``{"inputs": [[...], ...]}`` answers ``{"outputs": [[...], ...]}``;
  the key goes in ``Authorization: Bearer KEY``; an ``Idempotency-Key`` header names the chunk,
  so that a retried request is answered again without being charged twice.
* errors are ``{"error": {"code": ..., "message": ...}}``; HTTP 429 with code
  ``quota_exhausted`` means no more rows will be answered for this key, any other 429 (e.g.
  ``rate_limited``, with ``Retry-After``) is transient.
* ``GET /info`` (optional) declares ``input_dim``, ``output_dim`` and the ``output`` mode
  (``logits``, ``float32``, ``round:N``, ``label``, or ``softmax`` / ``softmax:N``: class
  probabilities, exact or rounded to N decimals).

Only the standard library is used on the client side (``http.client``, one kept-alive
connection per oracle).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import time
import uuid
from typing import Callable, Optional
from urllib.parse import urlsplit

import numpy as np

from .errors import OracleError, QueryBudgetExceeded
from .oracle import LABEL_ONLY_MESSAGE, Oracle

log = logging.getLogger("fidelity.http")

_TRANSIENT = {408, 425, 429, 500, 502, 503, 504}


class HTTPOracle(Oracle):
    """Queries a remote ``/predict`` endpoint; counts, budgets and journals like :class:`Oracle`.

    Args:
        url: the ``http(s)://host:port/.../predict`` endpoint.
        api_key: sent as ``Authorization: Bearer KEY``.
        batch_size: rows per request; larger batches of the engine are cut into near-equal
            requests of at most this many rows (also the journal's rows per record).
        retries: extra attempts per request after a connection error, a timeout, a 5xx or a
            transient 429; waits grow as ``backoff * 2**attempt`` up to ``max_backoff`` seconds
            (or the server's ``Retry-After``, capped the same way).
        backoff: first wait, in seconds.
        max_backoff: cap of one wait, in seconds.
        timeout: socket timeout of one request, in seconds.
        input_dim: the victim's input width; read from ``GET /info`` when not given.
        output_dim: the victim's output width; read from ``/info`` or the first answer.
        budget: see :class:`Oracle`.
        journal: see :meth:`Oracle.attach_journal`.
        progress: see :class:`Oracle`.
        encoding: ``json`` sends rows as JSON numbers (any JSON API); ``b64`` as base64 raw
            float64 (``{"inputs_b64", "dtype", "shape"}``, exact and ~30x cheaper to encode);
            ``auto`` picks ``b64`` when ``GET /info`` lists it in ``encodings``.
        sleep: the function used to wait (tests pass a fake clock).

    Attributes:
        info: what ``GET /info`` declared (empty when the server has no such endpoint).
        output_mode: the declared output mode, or ``None``.
        requests: HTTP requests sent, retries included.
        retried: requests that were attempts after the first for their chunk.

    Raises:
        OracleError: the server cannot be reached or rejects the key, ``input_dim`` is neither
            given nor declared, or the server declares an output mode that is not understood.

    Example:
        >>> oracle = HTTPOracle("http://127.0.0.1:8000/predict", api_key="k")  # doctest: +SKIP
        >>> result = fidelity.extract(oracle, journal="run.journal")            # doctest: +SKIP
    """

    def __init__(self, url: str, api_key: Optional[str] = None, *, batch_size: int = 256,
                 retries: int = 6, backoff: float = 0.05, max_backoff: float = 5.0,
                 timeout: float = 60.0, input_dim: Optional[int] = None,
                 output_dim: Optional[int] = None, budget: Optional[int] = None,
                 journal=None, progress: Optional[Callable[[dict], None]] = None,
                 encoding: str = "auto", sleep: Callable[[float], None] = time.sleep):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://host[:port]/path, got {url!r}")
        if encoding not in ("auto", "json", "b64"):
            raise ValueError(f"encoding must be auto, json or b64, got {encoding!r}")
        if int(retries) < 0 or backoff < 0 or max_backoff < 0 or timeout <= 0:
            raise ValueError("retries, backoff and max_backoff must be >= 0, timeout > 0")
        self.url = url
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._path = parts.path or "/predict"
        if parts.query:
            self._path += "?" + parts.query
        base = self._path.split("?")[0]
        base = base[:-len("/predict")] if base.endswith("/predict") else base.rstrip("/")
        self._info_path, self._usage_path = base + "/info", base + "/usage"
        self._api_key = api_key
        self.retries, self.backoff = int(retries), float(backoff)
        self.max_backoff = float(max_backoff)
        self.timeout = float(timeout)
        self._sleep = sleep
        self._conn: Optional[http.client.HTTPConnection] = None
        self._session = uuid.uuid4().hex[:12]
        self._seq = 0
        self.requests = 0
        self.retried = 0
        self.info = self._fetch_info()
        self.output_mode = self.info.get("output")
        if input_dim is None:
            input_dim = self.info.get("input_dim")
            if input_dim is None:
                raise OracleError(f"{url}: the server declares no input_dim (GET "
                                  f"{self._info_path}); pass input_dim=")
        elif self.info.get("input_dim") not in (None, int(input_dim)):
            raise OracleError(f"input_dim={input_dim} but the server declares "
                              f"{self.info['input_dim']}")
        if output_dim is None and self.output_mode != "label":
            output_dim = self.info.get("output_dim")
        declared = str(self.output_mode or "")
        super().__init__(self._send, int(input_dim), output_dim, budget, chunk_size=batch_size,
                         journal=journal, progress=progress,
                         answers="softmax" if declared.startswith("softmax") else "auto")
        self.label_only = self.output_mode == "label"
        if encoding == "auto":
            encoding = "b64" if "b64" in (self.info.get("encodings") or ()) else "json"
        self.encoding = encoding

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        """Closes the kept-alive connection (a later query opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "HTTPOracle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (http.client.HTTPSConnection if self._scheme == "https"
                   else http.client.HTTPConnection)
            conn = cls(self._host, self._port, timeout=self.timeout)
            conn.connect()
            # headers and body leave in two writes: without TCP_NODELAY, Nagle's algorithm
            # holds the body's tail until the server's delayed ACK (~40 ms a request)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return self._conn

    def _headers(self, extra: Optional[dict] = None) -> dict:
        h = {"Accept": "application/json", "User-Agent": "fidelity-httporacle"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        h.update(extra or {})
        return h

    def _request(self, method: str, path: str, body: Optional[bytes], headers: dict):
        """One request on the kept-alive connection; returns ``(status, headers, body)``."""
        self.requests += 1
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            self.close()
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        return resp.status, resp, data

    @staticmethod
    def _error(data: bytes) -> tuple[str, str, Optional[float]]:
        try:
            err = json.loads(data)["error"]
            return (str(err.get("code", "")), str(err.get("message", "")),
                    err.get("retry_after"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return "", data[:200].decode("utf-8", "replace"), None

    def _fetch_info(self) -> dict:
        status, _, data = self._retrying("GET", self._info_path, None, {}, accept=(404, 405))
        if status in (404, 405):
            return {}
        try:
            info = json.loads(data)
        except ValueError as exc:
            raise OracleError(f"GET {self._info_path}: not JSON ({exc})") from exc
        if not isinstance(info, dict):
            raise OracleError(f"GET {self._info_path}: expected a JSON object")
        mode = info.get("output")
        if mode is not None and not (mode in ("logits", "float32", "label", "softmax")
                                     or str(mode).startswith(("round:", "softmax:"))):
            raise OracleError(f"the server declares an unknown output mode {mode!r}")
        return info

    def usage(self) -> dict:
        """What the server counted for this key (``GET /usage``), e.g. ``rows`` and ``quota``."""
        _, _, data = self._retrying("GET", self._usage_path, None, {})
        return json.loads(data)

    def _retrying(self, method: str, path: str, body: Optional[bytes], extra: dict,
                  accept: tuple = ()):
        """Sends until a final answer; returns ``(status, response, body)`` of a 2xx (or of a
        status listed in ``accept``)."""
        headers = self._headers(extra)
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            wait = self.backoff * 2 ** attempt
            try:
                status, resp, data = self._request(method, path, body, headers)
            except (OSError, http.client.HTTPException) as exc:   # refused, reset, timed out
                last = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300 or status in accept:
                    return status, resp, data
                code, message, retry_after = self._error(data)
                if status == 429 and code == "quota_exhausted":
                    raise QueryBudgetExceeded(f"the server's quota for this key is exhausted: "
                                              f"{message}")
                if status in (401, 403):
                    raise OracleError(f"{method} {path}: the server rejected the API key "
                                      f"({status} {code}: {message})")
                if status not in _TRANSIENT:
                    raise OracleError(f"{method} {path}: HTTP {status} {code}: {message}")
                last = f"HTTP {status} {code}: {message}"
                header = resp.getheader("Retry-After")
                if retry_after is None and header is not None:
                    try:
                        retry_after = float(header)
                    except ValueError:
                        retry_after = None
                if retry_after is not None:
                    wait = max(wait, float(retry_after))
            if attempt < self.retries:
                log.info("%s %s failed (%s); retrying in %.2f s", method, path, last,
                         min(wait, self.max_backoff))
                self._sleep(min(wait, self.max_backoff))
        raise OracleError(f"{method} {self.url if path == self._path else path}: gave up after "
                          f"{self.retries + 1} attempts; last failure: {last}")

    # ------------------------------------------------------------------ the victim
    def _send(self, x: np.ndarray) -> np.ndarray:
        """Answers one chunk (called by :class:`Oracle`, which counts and journals it)."""
        self._seq += 1
        if self.encoding == "b64":
            body = json.dumps({"inputs_b64": base64.b64encode(
                np.ascontiguousarray(x, "<f8").tobytes()).decode("ascii"),
                "dtype": "<f8", "shape": list(x.shape)}).encode()
        else:
            body = json.dumps({"inputs": x.tolist()}).encode()
        _, _, data = self._retrying("POST", self._path, body, {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{self._session}-{self._seq}"})
        try:
            outputs = json.loads(data)["outputs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise OracleError(f"POST {self.url}: answer is not {{'outputs': [...]}}: "
                              f"{exc}") from exc
        if _integer_answers(outputs):
            self.label_only = True
            raise OracleError(LABEL_ONLY_MESSAGE)
        return outputs


def _integer_answers(outputs) -> bool:
    """True when the first answer is made of JSON integers: class labels, not scores."""
    if not isinstance(outputs, list) or not outputs:
        return False
    first = outputs[0]
    row = first if isinstance(first, list) else [first]
    return bool(row) and all(isinstance(v, int) and not isinstance(v, bool) for v in row)
