"""Several devices: a ReLUNetwork victim splits each query batch over all of them."""

import numpy as np

SCRIPT = r"""
import json, jax, numpy as np, fidelity as F
with jax.enable_x64(True):
    victim = F.ReLUNetwork.random(3, [64, 16, 10])
    oracle = F.Oracle(victim)
    result = F.extract(oracle, seed=0)
    net = result.network
    print(json.dumps(dict(devices=jax.device_count(), queries=result.queries,
                          w=np.asarray(net.weights[0]).tolist(), a=np.asarray(net.weights[1]).tolist())))
"""


def test_four_devices_same_network_same_queries(run_on_devices):
    one, four = run_on_devices(SCRIPT, 1), run_on_devices(SCRIPT, 4)
    assert one["devices"] == 1 and four["devices"] == 4
    assert four["queries"] == one["queries"]
    np.testing.assert_allclose(four["w"], one["w"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(four["a"], one["a"], rtol=0, atol=1e-12)
