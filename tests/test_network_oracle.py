import numpy as np
import pytest

import fidelity as F


def test_network_shapes_save_load(tmp_path):
    net = F.ReLUNetwork.random(3, [6, 5, 2])
    assert net.sizes == (6, 5, 2)
    assert net.num_params == 6 * 5 + 5 + 5 * 2 + 2
    x = np.random.default_rng(0).normal(size=(7, 6))
    y = net(x)
    assert y.shape == (7, 2)
    ref = np.maximum(x @ net.weights[0].T + net.biases[0], 0) @ net.weights[1].T + net.biases[1]
    np.testing.assert_allclose(y, ref, rtol=1e-14, atol=1e-14)
    net.save(tmp_path / "n.npz")
    back = F.ReLUNetwork.load(tmp_path / "n.npz")
    np.testing.assert_array_equal(back(x), y)


def test_network_rejects_bad_shapes():
    with pytest.raises(ValueError):
        F.ReLUNetwork([np.zeros((3, 2))], [np.zeros(2)])
    with pytest.raises(ValueError):
        F.ReLUNetwork([np.zeros((3, 2)), np.zeros((1, 4))], [np.zeros(3), np.zeros(1)])


def test_oracle_counts_and_budget():
    oracle = F.Oracle(F.ReLUNetwork.random(0, [4, 3, 1]), budget=10)
    oracle(np.zeros((6, 4)))
    assert oracle.queries == 6 and oracle.remaining == 4
    with pytest.raises(F.QueryBudgetExceeded):
        oracle(np.zeros((5, 4)))
    assert oracle.queries == 6  # a refused batch is not sent, not counted


def test_oracle_accepts_flat_answers_for_one_output():
    oracle = F.Oracle(lambda x: x.sum(1), input_dim=3)
    assert oracle(np.ones((2, 3))).shape == (2, 1)


@pytest.mark.parametrize("answer", [
    lambda x: np.full((x.shape[0], 2), np.nan),
    lambda x: np.full((x.shape[0], 2), np.inf),
    lambda x: np.zeros((x.shape[0] + 1, 2)),
    lambda x: np.zeros((x.shape[0], 2, 2)),
    lambda x: "nonsense",
])
def test_oracle_rejects_bad_answers(answer):
    oracle = F.Oracle(answer, input_dim=3, output_dim=2)
    with pytest.raises(F.OracleError):
        oracle(np.ones((2, 3)))


def test_oracle_rejects_changing_width():
    widths = iter([2, 3])
    oracle = F.Oracle(lambda x: np.zeros((x.shape[0], next(widths))), input_dim=3)
    oracle(np.ones((1, 3)))
    with pytest.raises(F.OracleError):
        oracle(np.ones((1, 3)))


def test_oracle_needs_input_dim_for_callables():
    with pytest.raises(ValueError):
        F.Oracle(lambda x: x)
