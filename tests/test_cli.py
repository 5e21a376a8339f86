import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import fidelity as F
from fidelity import cli


def test_cli_extract_and_evaluate(tmp_path, capsys):
    victim = F.ReLUNetwork.random(0, [12, 6, 3])
    victim.save(tmp_path / "v.npz")
    assert cli.main(["extract", str(tmp_path / "v.npz"), "--out", str(tmp_path / "s.npz"),
                     "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "ok" and summary["hidden"] == 6
    # the error bars (issue 15): black-box output error over the check answers (the check
    # lines' and the point check's 320), how many, and the checks' resolution
    assert 0 <= summary["output_error"] <= 1e-8 and summary["output_error_points"] >= 32 + 320
    assert 0 < summary["resolution"] <= 1e-6 and summary["error_estimate"] > 0
    assert cli.main(["evaluate", str(tmp_path / "v.npz"), str(tmp_path / "s.npz"),
                     "--samples", "2000"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["fidelity"] == 1.0 and rep["max_rel_error"] < 1e-9


def test_console_script_demo_runs():
    exe = shutil.which("fidelity")
    cmd = [exe] if exe else [sys.executable, "-m", "fidelity.cli"]
    out = subprocess.run(cmd + ["demo", "--samples", "2000"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "fidelity 1.000000" in out.stdout


def _wait_for(url, proc, seconds=120):
    import urllib.request
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"fidelity serve exited: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up within {seconds} s")


def test_console_scripts_serve_extract_over_http_and_evaluate(tmp_path):
    pytest.importorskip("uvicorn")
    exe = shutil.which("fidelity")
    cmd = [exe] if exe else [sys.executable, "-m", "fidelity.cli"]
    victim = F.ReLUNetwork.random(1, [20, 6, 3])
    victim.save(tmp_path / "v.npz")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(cmd + ["serve", str(tmp_path / "v.npz"), "--port", str(port),
                                     "--api-key", "secret", "--quota", "100000",
                                     "--log-file", str(tmp_path / "requests.log")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        info = _wait_for(f"http://127.0.0.1:{port}/info", server)
        assert info["input_dim"] == 20 and info["output"] == "logits"
        out = subprocess.run(cmd + ["extract", f"http://127.0.0.1:{port}/predict", "--out",
                                    str(tmp_path / "s.npz"), "--journal", str(tmp_path / "j"),
                                    "--json"],
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, FIDELITY_API_KEY="secret"))
        assert out.returncode == 0, out.stdout + out.stderr
        summary = json.loads(out.stdout)
        assert summary["status"] == "ok" and summary["hidden"] == 6
        assert summary["paid"] == summary["queries"] and summary["replayed"] == 0
        assert "neurons" in out.stderr                       # the progress lines
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        server.stderr.close()
    log = (tmp_path / "requests.log").read_text()
    assert log.count("POST /predict") >= 2 and "status=200" in log and "secret" not in log
    out = subprocess.run(cmd + ["evaluate", str(tmp_path / "v.npz"), str(tmp_path / "s.npz"),
                                "--samples", "2000"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and json.loads(out.stdout)["fidelity"] == 1.0


def test_cli_budget_stop_then_resume_with_the_journal(tmp_path, capsys):
    victim = F.ReLUNetwork.random(2, [16, 5, 2])
    victim.save(tmp_path / "v.npz")
    args = ["extract", str(tmp_path / "v.npz"), "--out", str(tmp_path / "s.npz"),
            "--journal", str(tmp_path / "q.journal"), "--json", "--quiet"]
    assert cli.main(args + ["--budget", "150"]) == cli.EXIT_PARTIAL
    captured = capsys.readouterr()
    first = json.loads(captured.out)
    assert first["status"] == "partial" and "budget" in first["stopped"]
    assert captured.err == ""                                # --quiet: no progress
    assert cli.main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["status"] == "ok" and second["replayed"] == first["paid"]
    assert first["paid"] + second["paid"] == second["queries"]


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    victim = F.ReLUNetwork.random(0, [4, 3, 1])
    victim.save(tmp_path / "v.npz")
    (tmp_path / "other.journal").write_bytes(b"not a journal")
    assert cli.main(["extract", str(tmp_path / "v.npz"), "--out", str(tmp_path / "s.npz"),
                     "--journal", str(tmp_path / "other.journal")]) == cli.EXIT_ERROR
    assert "not a fidelity journal" in capsys.readouterr().err


def test_progress_bar_lines():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = cli.Progress(stream, interval=0.0)
    bar.oracle(dict(queries=500, paid=300, replayed=200, budget=1000))
    bar.engine(dict(queries=500, budget=1000, neurons=7, lines=1, stage="fit"))
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r[############------------] 500/1,000 queries")
    assert "paid 300 (replayed 200), 7 neurons [fit]" in text and text.endswith("\n")
    plain = io.StringIO()
    bar = cli.Progress(plain)
    bar.oracle(dict(queries=5, paid=5, replayed=0, budget=None))   # not a terminal: stages only
    bar.engine(dict(queries=5, budget=None, neurons=1, lines=1, stage="search"))
    assert plain.getvalue() == "5 queries, paid 5, 1 neurons [search]\n"


def test_bench_runs_the_benchmark_or_says_where_it_is(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_bench_script", lambda: None)
    assert cli.main(["bench"]) == cli.EXIT_ERROR
    assert "source checkout" in capsys.readouterr().err
