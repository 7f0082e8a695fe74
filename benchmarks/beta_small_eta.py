"""Why the effective beta at a tiny step can sit far above ||Hg||/||g||: an ablation in float64.

    python benchmarks/beta_small_eta.py

For a BatchNorm VGG-11 at initialisation (width 1/16, batch 16, random images) it prints, for
eta from 1e-1 down to 1e-7, the probe's ratio ||grad L(x - eta g) - g|| / (eta ||g||) next to
its smooth-loss limit ||H g|| / ||g||, for three networks: ReLU with max-pooling (the model),
a smooth softplus instead of ReLU, and softplus with average pooling. If the ratio grows like
1/eta before falling back to the limit, a kink (a gradient jump of fixed size) was crossed;
the network whose ratio converges smoothly has none. This is an analysis, not part of the
package: it swaps the activation and the pooling by patching module attributes for one call.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape import models
from landscape.app import runtime

ETAS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


def softplus10(z: jax.Array) -> jax.Array:
    """A smooth ReLU: softplus(10 z) / 10."""
    return jax.nn.softplus(10 * z) / 10


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


@contextlib.contextmanager
def patched(activation=None, pool=None):
    """Temporarily replaces the VGG's ReLU and/or its 2x2 max-pool."""
    saved = nn.relu, models.max_pool_2x2
    try:
        if activation is not None:
            nn.relu = activation
        if pool is not None:
            models.max_pool_2x2 = pool
        yield
    finally:
        nn.relu, models.max_pool_2x2 = saved


def ratios(norm: str = "batchnorm") -> tuple[float, list[float]]:
    """Returns (||Hg||/||g||, [||grad L(x - eta g) - g|| / (eta ||g||) for eta in ETAS])."""
    model = models.create_model("vgg11", width=0.0625, norm=norm, conv_impl="xla")
    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 3), jnp.float64)
    y = jax.random.randint(jax.random.key(1), (16,), 0, 10)
    variables = jax.tree.map(
        lambda a: a.astype(jnp.float64), models.init_variables(model, jax.random.key(2))
    )

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grad = jax.jit(jax.grad(loss))
    params = variables["params"]
    g = grad(params)
    g_norm = optax.tree.norm(g)
    hg = jax.jvp(grad, (params,), (g,))[1]
    out = []
    for eta in ETAS:
        moved = jax.tree.map(lambda p, d, eta=eta: p - eta * d, params, g)
        change = optax.tree.norm(jax.tree.map(jnp.subtract, grad(moved), g))
        out.append(float(change / (eta * g_norm)))
    return float(optax.tree.norm(hg) / g_norm), out


def main() -> None:
    runtime.tune_process()  # as the landscape command tunes itself, before JAX starts
    jax.config.update("jax_enable_x64", True)
    cases = {
        "ReLU + max-pool (the model)": {},
        "softplus + max-pool": {"activation": softplus10},
        "softplus + average pool": {"activation": softplus10, "pool": avg_pool_2x2},
    }
    for label, patch in cases.items():
        with patched(**patch):
            limit, values = ratios()
        print(f"{label}: ||Hg||/||g|| = {limit:.4g}")
        for eta, value in zip(ETAS, values, strict=True):
            print(f"  eta {eta:.0e}: ||grad L(x - eta g) - g|| / (eta ||g||) = {value:.4g}")


if __name__ == "__main__":
    main()
