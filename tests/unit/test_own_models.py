"""A user's own network, data and loss through the pipeline: a Linen network with BatchNorm and
dropout and an NNX network (tests/own_models.py, reached by import path only): options, adapters,
and bad input refused before anything is written."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import OWN_DATA, user_config

from landscape.config import (
    ConfigError,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    apply_model_options,
    validate,
)
from landscape.data import DataError, load_dataset
from landscape.network import NetworkError, from_linen, parameter_shapes
from landscape.rundir import RunError
from landscape.runs import run
from landscape.train import build_network, make_optimizer


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(OWN_DATA)


def test_options_name_the_variants_and_the_factory_keyword():
    config = user_config()
    assert config.variants == ("none", "batchnorm")
    assert config.model_for("batchnorm").model_args == (("norm", "batchnorm"),)
    assert config.model_for("none").model_args == (("norm", "none"),)  # text stays text
    named = apply_model_options(RunConfig(), ["a=own_models:linen_mlp", "b=own_models:nnx_net"])
    assert named.variants == ("a", "b") and named.model_for("b").factory == "own_models:nnx_net"
    single = apply_model_options(RunConfig(), ["own_models:linen_mlp"], ["hidden=8"])
    assert single.variants == ("linen_mlp",) and single.model.model_args == (("hidden", 8),)
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="name each of several models"):
        apply_model_options(RunConfig(), ["own_models:linen_mlp", "own_models:nnx_net"])


def test_a_model_argument_landscape_passes_itself_is_one_line():
    config = ModelConfig(factory="own_models:linen_mlp", model_args=(("num_outputs", 1),))
    with pytest.raises(NetworkError, match=r"num_outputs is passed by landscape itself \(num_"):
        build_network(config, 3)


def test_linen_adapter_is_the_module_itself(dataset):
    network = build_network(ModelConfig(factory="own_models:linen_mlp"), 3)
    params, state = network.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
    assert state == {} and parameter_shapes(params)["['Dense_0']['kernel']"] == [108, 16]
    x = jnp.ones((4, 6, 6, 3))
    out, _ = network.apply(params, state, x, train=False)
    direct = network.module.apply({"params": params}, x, train=False)
    np.testing.assert_array_equal(out, direct)
    # Dropout draws from the step's key: the same key, the same outputs; another, others.
    a, _ = network.apply(params, state, x, train=True, rng=jax.random.key(1))
    b, _ = network.apply(params, state, x, train=True, rng=jax.random.key(1))
    c, _ = network.apply(params, state, x, train=True, rng=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert from_linen(network.module).kind == "linen"


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"factory": "no_such_module:f"}, RunError, "does not import"),
        ({"factory": "own_models:missing"}, RunError, "has no 'missing'"),
        ({"factory": "own_models:not_a_network"}, RunError, "returned a int"),
        ({"factory": "own_models:wrong_width"}, RunError, "must output \\(2, 3\\)"),
        ({"loss": "own_models:summed_loss"}, RunError, "one value per example"),
        ({"loss": "nonsense"}, ConfigError, "unknown loss"),
        ({"data": "own_models:nothing_here"}, DataError, "has no 'nothing_here'"),
        (
            {"factory": "own_models:raises"},
            RunError,
            "raised RuntimeError: the user's factory broke",
        ),
        ({"batch_size": 500}, RunError, "larger than the 96 training examples"),
    ],
)
def test_bad_input_is_one_line_and_no_run_directory(tmp_path, changes, error, message):
    config = user_config(variants="plain")
    model = config.model
    for key in ("factory", "loss"):
        if key in changes:
            model = model.__class__(**{**model.__dict__, key: changes.pop(key)})
    config = config.replace(model=model, **changes)
    with pytest.raises(error, match=message) as caught:
        run(config, tmp_path / "run", progress=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_network_errors_are_value_errors():
    assert issubclass(NetworkError, ValueError)


def test_capture_takes_the_outputs_of_named_layers_in_call_order():
    from landscape.activations import count_preactivations, sown_preactivations

    model_config = ModelConfig(factory="own_models:linen_mlp", model_args=(("norm", "batchnorm"),))
    module = build_network(model_config, 3).module
    variables = module.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)), train=False)
    x = jnp.ones((4, 6, 6, 3))
    captured = sown_preactivations(module, variables, x, capture=("Dense", "BatchNorm"))
    assert [v.shape for v in captured.values()] == [(4, 16), (4, 16), (4, 3)]
    first = variables["params"]["Dense_0"]
    np.testing.assert_allclose(
        captured[1], x.reshape(4, -1) @ first["kernel"] + first["bias"], rtol=1e-5
    )  # the first Dense layer's output comes first
    assert count_preactivations(module, variables, (6, 6, 3)) == 0
    assert count_preactivations(module, variables, (6, 6, 3), ("BatchNorm",)) == 1


def test_variants_of_one_factory_must_differ_and_name_folders():
    from landscape.config import validate

    with pytest.raises(ConfigError, match="one --model trains one network"):
        validate(user_config(variants="a,b"))
    with pytest.raises(ConfigError, match="cannot name a folder"):
        validate(user_config(variants="norm=../x,batchnorm"))


def test_a_users_optimizer_factory_trains_and_bad_ones_are_one_line(tmp_path, dataset):
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, 0.5, -1.0])}

    def first_update(opt):
        return opt.update(grads, opt.init(params), params)[0]["w"]

    # The factory gets --lr and the weight decay it takes (adamw's own, not chained before it).
    for decay in (0.0, 0.1):
        ours = make_optimizer(
            OptimizerConfig(name="own_models:adamw", learning_rate=0.01, weight_decay=decay)
        )
        direct = optax.adamw(0.01, b1=0.8, weight_decay=decay)
        np.testing.assert_array_equal(first_update(ours), first_update(direct))
    config = user_config(variants="plain").replace(
        optimizer=OptimizerConfig(name="own_models:adamw", learning_rate=0.01), steps=3
    )
    (report,) = run(config, tmp_path / "ok", progress=False, dataset=dataset)
    assert report.steps_run == 3
    saved = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert saved["optimizer"]["name"] == "own_models:adamw"
    for name, message in (
        ("own_models:no_learning_rate", "must take a learning_rate argument"),
        ("own_models:not_an_optimizer", "returned a dict, not an optax GradientTransformation"),
        ("own_models:nowhere", "has no 'nowhere'"),
    ):
        bad = config.replace(optimizer=OptimizerConfig(name=name))
        with pytest.raises(RunError, match=message):
            run(bad, tmp_path / "bad", progress=False, dataset=dataset)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match=r"unknown optimizer 'rmsprop'.*package.module:function"):
        validate(config.replace(optimizer=OptimizerConfig(name="rmsprop")))
