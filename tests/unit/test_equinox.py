"""The Equinox adapter: BatchNorm state, dropout keys, inference mode, and a run through the
pipeline whose offline re-probe equals its inline probe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import OWN_DATA, user_config

from landscape.config import ModelConfig
from landscape.data import load_dataset
from landscape.network import NetworkError
from landscape.results import read_rows
from landscape.runs import reprobe, run
from landscape.train import build_network

eqx = pytest.importorskip("equinox")  # the `equinox` extra (in `dev`)
from landscape.equinox_network import from_equinox  # noqa: E402


def test_state_keys_and_modes_follow_the_contract():
    network = build_network(ModelConfig(factory="own_equinox:eqx_net"), 3)
    params, state = network.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
    x = jax.random.normal(jax.random.key(1), (8, 6, 6, 3))
    a, new_state = network.apply(params, state, x, train=True, rng=jax.random.key(2))
    b, _ = network.apply(params, state, x, train=True, rng=jax.random.key(2))
    c, _ = network.apply(params, state, x, train=True, rng=jax.random.key(3))
    np.testing.assert_array_equal(a, b)  # the same key, the same dropout masks
    assert a.shape == (8, 3) and not np.array_equal(a, c)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    # Training mode moves BatchNorm's running averages; the state has the same structure.
    moved = [
        not np.array_equal(u, v)
        for u, v in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True)
    ]
    assert any(moved)
    # Inference mode: no randomness, the state unchanged and returned as it came.
    d, same = network.apply(params, state, x, train=False)
    e, _ = network.apply(params, state, x, train=False, rng=jax.random.key(9))
    np.testing.assert_array_equal(d, e)
    assert same is state


def test_a_stateless_module_and_a_bad_builder():
    network = build_network(ModelConfig(factory="own_equinox:eqx_plain"), 3)
    params, state = network.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
    assert state == {}
    x = jnp.ones((4, 6, 6, 3))
    out, _ = network.apply(params, state, x, train=True, rng=jax.random.key(1))
    weight, bias = params.layer.weight, params.layer.bias
    np.testing.assert_allclose(out, x.reshape(4, -1) @ weight.T + bias, rtol=1e-6)
    with pytest.raises(NetworkError, match=r"returned int, not an eqx\.Module"):
        from_equinox(lambda key: 3)
    with pytest.raises(NetworkError, match="the Equinox builder fails: ZeroDivisionError"):
        from_equinox(lambda key: 1 / 0)


def test_a_run_of_an_equinox_network_reprobes_bit_identical(tmp_path):
    dataset = load_dataset(OWN_DATA)
    config = user_config("own_equinox:eqx_net", variants="eqx").replace(steps=4)
    (report,) = run(config, tmp_path / "r", progress=False, dataset=dataset)
    assert report.steps_run == 4
    inline = read_rows(tmp_path / "r" / "eqx" / "probe.jsonl")
    offline = read_rows(reprobe(tmp_path / "r", progress=False, dataset=dataset)["eqx"])
    # The re-probe also reaches the final checkpoint (step 4), which training never probed.
    assert [r["step"] for r in inline] == [0, 1, 2, 3]
    assert [r["step"] for r in offline] == [0, 1, 2, 3, 4]
    for a, b in zip(inline, offline[:4], strict=True):
        assert a["loss"] == b["loss"] and a["grad_dist"] == b["grad_dist"]
