import json
import shutil
import subprocess
import sys

import numpy as np

import fidelity as F
from fidelity import cli


def test_cli_extract_and_evaluate(tmp_path, capsys):
    victim = F.ReLUNetwork.random(0, [12, 6, 3])
    victim.save(tmp_path / "v.npz")
    assert cli.main(["extract", str(tmp_path / "v.npz"), "--out", str(tmp_path / "s.npz"),
                     "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "ok" and summary["hidden"] == 6
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
