"""The HTTP oracle against a real server on loopback (started and stopped by each test)."""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import fidelity as F  # noqa: E402
from fidelity import cli  # noqa: E402
from fidelity.http import HTTPOracle, _integer_answers  # noqa: E402
from fidelity.journal import Journal  # noqa: E402
from fidelity.server import BackgroundServer, create_app, shape_outputs  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

VICTIM_784 = F.ReLUNetwork.random(0, [784, 32, 10])


def _same(a: F.ReLUNetwork, b: F.ReLUNetwork) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.weights + a.biases, b.weights + b.biases))


@pytest.fixture(scope="module")
def reference_784():
    """The in-process extraction that HTTP runs must reproduce exactly."""
    return F.extract(F.Oracle(VICTIM_784), seed=0)


def _post(url, body, headers=None, method="POST", path="/predict"):
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data


def test_extraction_over_http_equals_in_process_and_counts_agree(reference_784):
    app = create_app(VICTIM_784, api_keys=["alice"])
    with BackgroundServer(app) as srv:
        oracle = HTTPOracle(srv.url + "/predict", api_key="alice")
        assert oracle.encoding == "b64" and oracle.input_dim == 784
        result = F.extract(oracle, seed=0)
        oracle.close()
        usage = app.state.ledger.usage("alice")
    assert result.status == "ok" and result.queries == reference_784.queries
    assert usage["rows"] == result.queries == oracle.paid       # the server billed what we used
    assert _same(result.network, reference_784.network)


def test_json_encoding_matches_a_chunked_in_process_run():
    victim = F.ReLUNetwork.random(1, [40, 10, 4])
    reference = F.extract(F.Oracle(victim, chunk_size=128), seed=2)
    app = create_app(victim)
    with BackgroundServer(app) as srv, \
            HTTPOracle(srv.url + "/predict", batch_size=128, encoding="json") as oracle:
        result = F.extract(oracle, seed=2)
    assert _same(result.network, reference.network)
    assert app.state.ledger.usage()["rows"] == reference.queries


class _LoseEveryThirdAnswer:
    """Runs every third /predict request fully (so it is billed), then answers 503 instead."""

    def __init__(self, app):
        self.app, self.seen, self.lost = app, 0, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/predict":
            self.seen += 1
            if self.seen % 3 == 0:
                async def discard(message):
                    pass
                await self.app(scope, receive, discard)
                self.lost += 1
                await JSONResponse({"error": {"code": "unavailable", "message": "injected"}},
                                   status_code=503)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def test_lost_answers_are_retried_without_double_billing():
    victim = F.ReLUNetwork.random(2, [30, 8, 3])
    reference = F.extract(F.Oracle(victim, chunk_size=64), seed=0)
    app = create_app(victim, api_keys=["k"])
    flaky = _LoseEveryThirdAnswer(app)
    waits = []
    with BackgroundServer(flaky) as srv, HTTPOracle(
            srv.url + "/predict", api_key="k", batch_size=64, sleep=waits.append) as oracle:
        result = F.extract(oracle, seed=0)
    usage = app.state.ledger.usage("k")
    assert flaky.lost > 3 and oracle.retried == flaky.lost and len(waits) == flaky.lost
    assert usage["rows"] == result.queries == reference.queries      # billed once per row
    assert usage["replays"] == flaky.lost
    assert _same(result.network, reference.network)


def test_rate_limited_requests_back_off_and_succeed():
    victim = F.ReLUNetwork.random(0, [6, 4, 2])
    app = create_app(victim, api_keys=["k"], rate=5.0, burst=3)
    x = np.random.default_rng(0).normal(size=(8, 6))
    expect = np.concatenate([victim(x[i:i + 1]) for i in range(8)])   # also warms the JIT
    with BackgroundServer(app) as srv, HTTPOracle(srv.url + "/predict", api_key="k",
                                                  batch_size=1, retries=20) as oracle:
        y = np.concatenate([oracle(x[i:i + 1]) for i in range(8)])
    np.testing.assert_array_equal(y, expect)
    usage = app.state.ledger.usage("k")
    assert usage["rows"] == 8 and usage["refused"] == oracle.retried > 0


def test_quota_stop_keeps_the_journal_and_a_new_key_finishes(tmp_path):
    victim = F.ReLUNetwork.random(5, [50, 12, 4])
    reference = F.extract(F.Oracle(victim, chunk_size=256), seed=1)
    app = create_app(victim, api_keys=["first", "second"], quota=reference.queries * 2 // 3)
    path = tmp_path / "run.journal"
    with BackgroundServer(app) as srv:
        url = srv.url + "/predict"
        with HTTPOracle(url, api_key="first") as first:
            with pytest.raises(F.QueryBudgetExceeded) as info:
                F.extract(first, seed=1, journal=path)
        assert info.value.result is not None and info.value.result.status == "partial"
        journal = Journal(path, input_dim=50)
        billed_first = app.state.ledger.usage("first")["rows"]
        assert journal.dropped_bytes == 0 and journal.rows == billed_first == first.paid > 0
        with HTTPOracle(url, api_key="second") as second:
            result = F.extract(second, seed=1, journal=path)
    assert result.status == "ok" and second.replayed == billed_first
    assert billed_first + app.state.ledger.usage("second")["rows"] == reference.queries
    assert _same(result.network, reference.network)


def test_kill_9_then_resume_gives_the_same_network_and_pays_little_more(tmp_path,
                                                                        reference_784):
    app = create_app(VICTIM_784, api_keys=["k"])
    path = tmp_path / "run.journal"
    full = reference_784.queries * 8 * (784 + 10)       # journal bytes of a whole run
    with BackgroundServer(app) as srv:
        url = srv.url + "/predict"
        cmd = [sys.executable, "-m", "fidelity.cli", "extract", url, "--api-key", "k",
               "--journal", str(path), "--out", str(tmp_path / "killed.npz"), "--quiet"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                if path.exists() and path.stat().st_size > 0.4 * full:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the extraction ended before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
            proc.stderr.close()
        paid_before = app.state.ledger.usage("k")["rows"]
        kept = Journal(path, input_dim=784).rows
        assert 0 < kept <= paid_before <= kept + 256      # at most one chunk lost
        assert cli.main(["extract", url, "--api-key", "k", "--journal", str(path),
                         "--out", str(tmp_path / "stolen.npz"), "--quiet", "--json"]) == 0
    paid = app.state.ledger.usage("k")["rows"]
    assert paid <= 1.02 * reference_784.queries
    assert _same(F.ReLUNetwork.load(tmp_path / "stolen.npz"), reference_784.network)


def test_bad_requests_get_the_right_4xx_and_the_server_keeps_serving():
    victim = F.ReLUNetwork.random(0, [3, 2, 2])
    app = create_app(victim, api_keys=["k"], max_rows=10, max_bytes=4000)
    auth = {"Authorization": "Bearer k", "Content-Type": "application/json"}
    ok_row = json.dumps({"inputs": [[1.0, 2.0, 3.0]]})
    cases = [
        ("not json", auth, 400, "bad_json"),
        ('{"rows": [[1, 2, 3]]}', auth, 422, "bad_request"),
        ('{"inputs": 5}', auth, 422, "bad_shape"),
        ('{"inputs": [[1, 2]]}', auth, 422, "bad_shape"),
        ('{"inputs": [[1, 2, 3], [1, 2]]}', auth, 422, "bad_shape"),
        ('{"inputs": [[[1, 2, 3]]]}', auth, 422, "bad_shape"),
        ('{"inputs": [["a", "b", "c"]]}', auth, 422, "not_numeric"),
        ('{"inputs": [[1, null, 3]]}', auth, 422, "not_numeric"),
        ('{"inputs": [[NaN, 1, 2]]}', auth, 422, "not_finite"),
        ('{"inputs": [[1e999, 1, 2]]}', auth, 422, "not_finite"),
        (json.dumps({"inputs": [[0, 0, 0]] * 11}), auth, 413, "too_many_rows"),
        (json.dumps({"inputs": [[0.123456789] * 3] * 9, "pad": "x" * 5000}), auth, 413,
         "too_many_bytes"),
        ('{"inputs_b64": "AAAA", "shape": [1, 3]}', auth, 422, "bad_shape"),
        ('{"inputs_b64": "%%%", "shape": [1, 3]}', auth, 422, "bad_request"),
        (ok_row, {}, 401, "missing_key"),
        (ok_row, {"Authorization": "Bearer nope"}, 403, "bad_key"),
    ]
    with BackgroundServer(app) as srv:
        for body, headers, status, code in cases:
            got, answer = _post(srv.url, body.encode(), headers)
            assert (got, answer["error"]["code"]) == (status, code), body[:60]
        huge = b'{"inputs": [' + b"[1, 2, 3], " * 2_000_000 + b"[1, 2, 3]]}"
        try:       # 22 MB: refused from its Content-Length (the server may close early)
            got, answer = _post(srv.url, huge, auth)
            assert got == 413 and answer["error"]["code"] == "too_many_bytes"
        except (ConnectionError, BrokenPipeError):
            pass
        same_key = dict(auth, **{"Idempotency-Key": "one"})
        assert _post(srv.url, ok_row.encode(), same_key)[0] == 200
        got, answer = _post(srv.url, b'{"inputs": [[3, 2, 1]]}', same_key)
        assert (got, answer["error"]["code"]) == (422, "idempotency_key_reused")
        assert _post(srv.url, b"", auth, method="GET")[0] == 405
        assert _post(srv.url, b"", auth, method="GET", path="/nowhere")[0] == 404
        got, answer = _post(srv.url, ok_row.encode(), auth)
        assert got == 200 and np.allclose(answer["outputs"], victim(np.array([[1.0, 2, 3]])),
                                          rtol=0, atol=0)
        got, usage = _post(srv.url, b"", auth, method="GET", path="/usage")
    assert got == 200 and usage["rows"] == 2 and usage["requests"] == 2   # only valid rows


def test_load_from_several_clients_loses_nothing():
    victim = F.ReLUNetwork.random(0, [8, 6, 3])
    keys = [f"key{i}" for i in range(4)]
    app = create_app(victim, api_keys=keys)
    threads, per_thread, errors, rows = 8, 120, [], [0] * 8

    def client(i):
        rng = np.random.default_rng(i)
        try:
            with HTTPOracle(srv.url + "/predict", api_key=keys[i % 4], batch_size=8) as oracle:
                for _ in range(per_thread):
                    x = rng.normal(size=(int(rng.integers(1, 5)), 8))
                    if not np.array_equal(oracle(x), victim(x)):
                        errors.append(f"client {i}: wrong answer")
                    rows[i] += x.shape[0]
                if oracle.requests != per_thread + 1 or oracle.paid != rows[i]:
                    errors.append(f"client {i}: {oracle.requests} requests, {oracle.paid} rows")
        except Exception as exc:  # collected and reported by the main thread
            errors.append(f"client {i}: {exc!r}")

    with BackgroundServer(app) as srv:
        pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in pool)
    assert not errors, errors[:5]
    for j, key in enumerate(keys):
        usage = app.state.ledger.usage(key)
        assert usage["rows"] == rows[j] + rows[j + 4]
        assert usage["requests"] == 2 * per_thread
    assert app.state.ledger.total_rows() == sum(rows)


def test_label_only_victims_are_refused_with_a_pointer_to_learn(tmp_path, capsys):
    victim = F.ReLUNetwork.random(0, [5, 4, 3])
    app = create_app(victim, output="label")
    with BackgroundServer(app) as srv, HTTPOracle(srv.url + "/predict") as oracle:
        assert oracle.label_only
        with pytest.raises(F.OracleError, match="learn"):
            F.extract(oracle)
        assert oracle.paid == 0
        code = cli.main(["extract", srv.url + "/predict", "--out", str(tmp_path / "s.npz")])
        assert code == 1 and "learn" in capsys.readouterr().err

        async def no_info(scope, receive, send):     # a label API that declares nothing
            if scope["type"] == "http" and scope["path"] == "/info":
                await JSONResponse({"error": {"code": "nope"}}, status_code=404)(
                    scope, receive, send)
            else:
                await app(scope, receive, send)
    with BackgroundServer(no_info) as srv, HTTPOracle(srv.url + "/predict", input_dim=5) as oracle:
        assert not oracle.label_only
        with pytest.raises(F.OracleError, match="labels only"):
            F.extract(oracle)
        assert oracle.label_only


def test_output_modes_and_label_detection():
    y = np.array([[0.123456789, -2.5, 3.0], [1.0, 7.25, -1.0]])
    assert shape_outputs(y, "logits") == y.tolist()
    assert shape_outputs(y, "round:2") == [[0.12, -2.5, 3.0], [1.0, 7.25, -1.0]]
    assert shape_outputs(y, "float32")[0][0] == float(np.float32(0.123456789))
    assert shape_outputs(y, "label") == [2, 1]
    assert shape_outputs(y[:, :1], "label") == [1, 1]
    assert _integer_answers([2, 1]) and _integer_answers([[2], [1]])
    assert not _integer_answers([[2.0], [1.0]]) and not _integer_answers([[True]])
    with pytest.raises(ValueError):
        create_app(F.ReLUNetwork.random(0, [3, 2, 1]), output="round:x")


def test_an_unreachable_server_is_an_oracle_error_after_bounded_back_off():
    srv = BackgroundServer(create_app(F.ReLUNetwork.random(0, [3, 2, 1])))
    url = srv.url + "/predict"
    srv.stop()                       # the port is free again: connections are refused
    waits = []
    with pytest.raises(F.OracleError, match="gave up after 4 attempts"):
        HTTPOracle(url, retries=3, backoff=0.5, max_backoff=1.0, sleep=waits.append)
    assert waits == [0.5, 1.0, 1.0]


def test_a_deep_victim_served_over_http_is_extracted_as_in_process():
    victim = F.ReLUNetwork.random(1, [8, 6, 4, 2])
    reference = F.extract(F.Oracle(victim, chunk_size=128), seed=0)
    app = create_app(victim)
    with BackgroundServer(app) as srv, \
            HTTPOracle(srv.url + "/predict", batch_size=128) as oracle:
        result = F.extract(oracle, seed=0)
    assert result.status == "ok" and [i.width for i in result.layers] == [6, 4]
    assert _same(result.network, reference.network)
    assert app.state.ledger.usage()["rows"] == reference.queries
