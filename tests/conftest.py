import json
import os
import subprocess
import sys

import jax
import pytest
from hypothesis import settings

# The suite is deterministic (CI must not turn red on a draw): hypothesis replays the same
# examples every run. FIDELITY_HYPOTHESIS=explore draws new ones.
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("FIDELITY_HYPOTHESIS", "fixed"))


@pytest.fixture(autouse=True)
def x64():
    """Tests run in float64, opted into at the edge (never at import of the package)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def run_on_devices():
    """Runs a Python script in a fresh process with ``devices`` forced CPU devices and returns
    the JSON object its last printed line holds."""
    def run(script: str, devices: int) -> dict:
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    return run
