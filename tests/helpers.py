"""Helpers shared by the unit and integration tests (``from helpers import ...``; pyproject's
``pythonpath = ["tests"]`` puts this folder on the path). Fixtures live in conftest.py.

Nothing here names a machine's own paths: real data comes from environment variables only
(.ci/run sets their defaults for the CI machines).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The real CIFAR-10 archive (cifar10-jpeg.tar.gz: JPEG image folders) used by the real-data tests.
CIFAR_JPEG_ENV = "LANDSCAPE_CIFAR_JPEG"


def real_cifar_jpeg() -> Path | None:
    """Returns the real CIFAR-10 JPEG archive $LANDSCAPE_CIFAR_JPEG names, or None when the
    variable is unset or names no file."""
    env = os.environ.get(CIFAR_JPEG_ENV)
    if not env:
        return None
    path = Path(env)
    return path if path.is_file() else None


def require_real_cifar_jpeg() -> Path:
    """Returns ``real_cifar_jpeg()``, or skips the calling test with the reason it is missing."""
    path = real_cifar_jpeg()
    if path is not None:
        return path
    env = os.environ.get(CIFAR_JPEG_ENV)
    if not env:
        pytest.skip(
            f"real CIFAR-10 not available: set {CIFAR_JPEG_ENV} to cifar10-jpeg.tar.gz "
            "(.ci/run sets it)"
        )
    pytest.skip(f"real CIFAR-10 not available: {CIFAR_JPEG_ENV}={env} is not a file")


# The folder holding the official MNIST IDX files (here the test pair only) for the real-data tests.
MNIST_ENV = "LANDSCAPE_MNIST_DIR"


def require_real_mnist() -> Path:
    """Returns the folder $LANDSCAPE_MNIST_DIR names when it holds MNIST's IDX test images, or
    skips the calling test with the reason it is missing."""
    env = os.environ.get(MNIST_ENV)
    if not env:
        pytest.skip(
            f"real MNIST not available: set {MNIST_ENV} to a folder with the official IDX files "
            "(.ci/run sets it)"
        )
    folder = Path(env)
    if not any(folder.glob("t10k-images*idx3-ubyte*")):
        pytest.skip(f"real MNIST not available: {MNIST_ENV}={env} holds no t10k-images IDX file")
    return folder


def with_(config, **changes):
    """Returns ``config`` (a RunConfig) with nested fields replaced: with_(c, probe={"every": 2})."""
    out = {}
    for key, value in changes.items():
        if isinstance(value, dict):
            out[key] = dataclasses.replace(getattr(config, key), **value)
        else:
            out[key] = value
    return config.replace(**out)


def params_of(run_dir, variant, config, dataset, step=None):
    """Returns the parameters of ``variant``'s checkpoint at ``step`` (None: the newest)."""
    from landscape.checkpoints import Checkpointer
    from landscape.runs import Trainer

    trainer = Trainer(config, variant, dataset)
    with Checkpointer(Path(run_dir) / variant / "checkpoints", config.checkpoint) as ckpt:
        return ckpt.restore(step, trainer.initial_state())


def assert_trees_equal(a, b):
    """Asserts that two pytrees hold the same arrays, bit for bit."""
    import jax
    import numpy as np

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# Algorithm 1's noise constants far from the paper's (0.5, 1.25, 0.1, 0.1) in every one.
NOISE_CONSTANTS = {"noise_mu": 2.0, "noise_sigma": 3.0, "noise_r_mu": 0.4, "noise_r_sigma": 0.5}


def noise_draws(model, x, key):
    """Returns every NoisyNorm's noise (Algorithm1Noise) of one training-mode forward pass of a
    freshly initialised ``model`` on ``x``."""
    import jax

    from landscape.models import init_variables

    @jax.jit  # init and forward as one program: op by op, VGG takes tens of seconds on a CPU
    def forward(key):
        init_key, noise_key = jax.random.split(key)
        variables = init_variables(model, init_key, x.shape[1:])
        mutable = ["batch_stats", "intermediates"]
        return model.apply(variables, x, train=True, mutable=mutable, rngs={"noise": noise_key})

    inter = forward(key)[1]["intermediates"]
    return [v["noise"][0] for k, v in inter.items() if k.startswith("NoisyNorm")]


def make_state(seed: int = 0):
    """A small TrainState (a conv and a dense layer, Adam's state, BatchNorm statistics) for
    checkpoint tests; a subprocess imports it too."""
    import jax
    import jax.numpy as jnp
    import optax

    from landscape.train import TrainState

    key = jax.random.key(seed)
    params = {
        "Conv3x3_0": {"kernel": jax.random.normal(key, (3, 3, 3, 4)), "bias": jnp.arange(4.0)},
        "Dense_0": {"kernel": jnp.ones((4, 10)), "bias": jnp.zeros(10)},
    }
    opt = optax.adam(1e-3)
    return TrainState(
        step=jnp.asarray(7, jnp.int32),
        params=params,
        batch_stats={"BatchNorm_0": {"mean": jnp.full(4, 0.5), "var": jnp.full(4, 2.0)}},
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(seed + 1)),
    )


def parallel_config():
    """The parallel sweep tests' base configuration: conftest's tiny VGG-11 (width 1/16, batch
    16, synthetic data), one variant, 20 steps, every step checkpointed and probed."""
    from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig

    return RunConfig(
        preset="test",
        data="synthetic",
        seed=3,
        steps=20,
        batch_size=16,
        eval_every=10,
        eval_batches=1,
        log_every=2,
        variants=("standard",),
        model=ModelConfig(width=0.0625, conv_impl="xla"),
        checkpoint=CheckpointConfig(every=1, max_to_keep=None, keep_period=None),
        probe=ProbeConfig(every=1, num_etas=2, strategy="map"),
    )


OWN_DATA = "own_models:tiny_images"  # a user's data factory (tests/own_models.py)


def user_config(factory: str = "own_models:linen_mlp", **changes):
    """A short run of a user's network from tests/own_models.py on its data factory: 5 steps of
    batch 16, every step checkpointed and probed with 3 step sizes; ``variants`` as the command
    takes them (default ``norm=none,batchnorm``)."""
    from landscape.config import CheckpointConfig, ProbeConfig, RunConfig, apply_model_options

    base = RunConfig(
        preset="test",
        data=OWN_DATA,
        seed=1,
        steps=5,
        batch_size=16,
        eval_every=0,
        eval_batches=1,
        log_every=2,
        checkpoint=CheckpointConfig(every=1, keep_all=True),
        probe=ProbeConfig(every=1, num_etas=3, strategy="map"),
    )
    variants = changes.pop("variants", "norm=none,batchnorm")
    return apply_model_options(base, [factory], [], variants).replace(**changes)


def read_jsonl(path):
    """Returns the rows of a JSON-lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
