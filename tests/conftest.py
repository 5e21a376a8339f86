import jax
import pytest


@pytest.fixture(autouse=True)
def x64():
    """Tests run in float64, opted into at the edge (never at import of the package)."""
    with jax.enable_x64(True):
        yield
