"""Definition 2.1 against a hand computation on a 3-layer linear network, in float64.

The network is out = x W1 W2 W3 with the squared loss L = ||out - y||^2 / (2n). Its layer
gradients, by the chain rule with R = (out - y) / n, are

    dW3 = (x W1 W2)^T R,   dW2 = (x W1)^T R W3^T,   dW1 = x^T R W3^T W2^T,

written out below in numpy; G' of layer i is the same formula after the layers before i moved.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from landscape.analyses.ics import parse_layers
from landscape.ics import Layer, internal_covariate_shift, layer_owner, model_layers


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (3, 5), (5, 2)]
    ws = [rng.normal(size=s) for s in shapes]
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 2))
    return ws, x, y


def _loss(params, batch):
    x, y = batch
    out = x @ params["w1"] @ params["w2"] @ params["w3"]
    return 0.5 * jnp.sum((out - y) ** 2) / x.shape[0]


def _hand_grads(w1, w2, w3, x, y):
    r = (x @ w1 @ w2 @ w3 - y) / x.shape[0]
    return [x.T @ r @ w3.T @ w2.T, (x @ w1).T @ r @ w3.T, (x @ w1 @ w2).T @ r]


def _hand_ics(ws, x, y, step):
    """Returns (dist, cosine) per layer with W^{t+1} = W^t + step(G)."""
    g = _hand_grads(*ws, x, y)
    new = [w + u for w, u in zip(ws, step(g), strict=True)]
    dists, cosines = [], []
    for i in range(3):
        mixed = new[:i] + ws[i:]
        g_shift = _hand_grads(*mixed, x, y)[i]
        dists.append(np.linalg.norm(g[i] - g_shift))
        cosines.append(np.sum(g[i] * g_shift) / np.linalg.norm(g[i]) / np.linalg.norm(g_shift))
    return np.array(dists), np.array(cosines)


def _run(optimizer, opt_state, ws, x, y, **kwargs):
    params = {f"w{i + 1}": jnp.asarray(w) for i, w in enumerate(ws)}
    return internal_covariate_shift(
        _loss, params, opt_state, optimizer, (jnp.asarray(x), jnp.asarray(y)), **kwargs
    )


def test_sgd_matches_hand_computation():
    with jax.enable_x64(True):
        ws, x, y = _problem()
        lr = 0.3
        opt = optax.sgd(lr)
        params = {f"w{i + 1}": jnp.asarray(w) for i, w in enumerate(ws)}
        result = _run(opt, opt.init(params), ws, x, y)
        dist, cosine = _hand_ics(ws, x, y, lambda g: [-lr * gi for gi in g])
        assert result.dist.dtype == jnp.float64
        np.testing.assert_allclose(result.dist, dist, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.cosine, cosine, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(result.layer, [1, 2, 3])
        grads = _hand_grads(*ws, x, y)
        np.testing.assert_allclose(result.grad_norm, [np.linalg.norm(g) for g in grads], atol=1e-10)
        # Nothing precedes the first layer: G' = G exactly; later layers do move.
        assert float(result.dist[0]) == 0.0 and float(result.cosine[0]) == pytest.approx(
            1.0, abs=1e-15
        )
        assert np.all(np.asarray(result.dist[1:]) > 1e-3)


def test_zero_learning_rate_gives_no_shift():
    with jax.enable_x64(True):
        ws, x, y = _problem(1)
        opt = optax.sgd(0.0)
        params = {f"w{i + 1}": jnp.asarray(w) for i, w in enumerate(ws)}
        result = _run(opt, opt.init(params), ws, x, y)
        # Equal up to the rounding of two separately compiled gradient evaluations.
        np.testing.assert_allclose(result.dist, 0.0, atol=1e-13)
        np.testing.assert_allclose(result.cosine, 1.0, atol=1e-14)
        assert float(result.dist[0]) == 0.0  # layer 1: G' is G by definition


def _warm_state(opt, ws, x, y, steps=2):
    """Returns the optimiser state after a few real steps (non-trivial momentum / moments)."""
    params = {f"w{i + 1}": jnp.asarray(w) for i, w in enumerate(ws)}
    state = opt.init(params)
    batch = (jnp.asarray(x), jnp.asarray(y))
    for _ in range(steps):
        updates, state = opt.update(jax.grad(_loss)(params, batch), state, params)
        params = optax.apply_updates(params, updates)
    return state


def test_momentum_uses_the_optimisers_update():
    with jax.enable_x64(True):
        ws, x, y = _problem(2)
        lr, beta = 0.05, 0.9
        opt = optax.sgd(lr, momentum=beta)
        state = _warm_state(opt, ws, x, y)
        trace = optax.tree_utils.tree_get(state, "trace")
        prev = [np.asarray(trace[f"w{i + 1}"]) for i in range(3)]
        result = _run(opt, state, ws, x, y)
        # optax's momentum: trace <- g + beta * trace; update = -lr * trace.
        dist, cosine = _hand_ics(
            ws, x, y, lambda g: [-lr * (gi + beta * p) for gi, p in zip(g, prev, strict=True)]
        )
        np.testing.assert_allclose(result.dist, dist, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.cosine, cosine, rtol=0, atol=1e-10)
        plain, _ = _hand_ics(ws, x, y, lambda g: [-lr * gi for gi in g])
        assert abs(float(result.dist[2]) - plain[2]) > 1e-6  # not plain SGD


def test_adam_uses_the_optimisers_update():
    with jax.enable_x64(True):
        ws, x, y = _problem(3)
        lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
        opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
        state = _warm_state(opt, ws, x, y, steps=3)
        mu = optax.tree_utils.tree_get(state, "mu")
        nu = optax.tree_utils.tree_get(state, "nu")
        count = int(optax.tree_utils.tree_get(state, "count")) + 1

        def adam_step(g):
            out = []
            for i, gi in enumerate(g):
                m = b1 * np.asarray(mu[f"w{i + 1}"]) + (1 - b1) * gi
                v = b2 * np.asarray(nu[f"w{i + 1}"]) + (1 - b2) * gi**2
                m_hat, v_hat = m / (1 - b1**count), v / (1 - b2**count)
                out.append(-lr * m_hat / (np.sqrt(v_hat) + eps))
            return out

        result = _run(opt, state, ws, x, y)
        dist, cosine = _hand_ics(ws, x, y, adam_step)
        np.testing.assert_allclose(result.dist, dist, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.cosine, cosine, rtol=0, atol=1e-10)


def test_selected_layers_and_grouped_parameters():
    with jax.enable_x64(True):
        ws, x, y = _problem(4)
        lr = 0.2
        opt = optax.sgd(lr)
        params = {f"w{i + 1}": jnp.asarray(w) for i, w in enumerate(ws)}
        full = _run(opt, opt.init(params), ws, x, y)
        chosen = _run(opt, opt.init(params), ws, x, y, select=jnp.array([3, 2]))
        np.testing.assert_array_equal(chosen.layer, [3, 2])
        np.testing.assert_allclose(chosen.dist, full.dist[jnp.array([2, 1])], atol=1e-12)
        # Two parameters in one layer: W1 and W2 together are "layer 1", so the second layer
        # (W3) sees both updated: its G' is the hand G' of W3 after W1 and W2 moved.
        layers = [Layer("a", (("w1",), ("w2",))), Layer("b", (("w3",),))]
        grouped = _run(opt, opt.init(params), ws, x, y, layers=layers)
        dist, _ = _hand_ics(ws, x, y, lambda g: [-lr * gi for gi in g])
        assert float(grouped.dist[1]) == pytest.approx(dist[2], abs=1e-10)
        assert float(grouped.dist[0]) == 0.0
        g = _hand_grads(*ws, x, y)
        assert float(grouped.grad_norm[0]) == pytest.approx(
            np.sqrt(np.sum(g[0] ** 2) + np.sum(g[1] ** 2)), abs=1e-10
        )


def test_layer_owner_and_parse_layers():
    params = {"a": {"kernel": 0, "bias": 0}, "b": {"scale": 0}, "c": {"kernel": 0}}
    owner = layer_owner(params, [Layer("x", (("a",), ("b",))), Layer("y", (("c",),))])
    assert owner == {"a": {"kernel": 1, "bias": 1}, "b": {"scale": 1}, "c": {"kernel": 2}}
    with pytest.raises(ValueError, match="belongs to no layer"):
        layer_owner(params, [Layer("x", (("a",),))])
    assert parse_layers(None, 9) == list(range(1, 10))
    assert parse_layers("5,9,5", 9) == [5, 9]
    for bad in ("10", "0", "x", ","):
        with pytest.raises(ValueError, match="--layers"):
            parse_layers(bad, 9)


# --- a VGG's layers (over a run's checkpoints: integration/test_ics_runs.py) -------------------


def test_model_layers_of_vgg_group_batchnorm_with_its_conv():
    from landscape.models import create_model, init_variables

    model = create_model("vgg11", width=0.0625, norm="batchnorm")
    variables = init_variables(model, jax.random.key(0))
    layers = model_layers(model, variables, jnp.zeros((1, 32, 32, 3)))
    assert [layer.name for layer in layers] == [*(f"conv{i}" for i in range(1, 9)), "classifier"]
    assert layers[4].modules == (("Conv3x3_4",), ("BatchNorm_4",))
    assert layers[8].modules == (("Dense_0",),)
    owner = layer_owner(variables["params"], layers)
    assert owner["BatchNorm_4"]["scale"] == 5 and owner["Dense_0"]["kernel"] == 9


# --- the figure -------------------------------------------------------------------------------


def _fake_ics(variants=("standard", "batchnorm"), layers=(1, 5, 9)):
    steps = np.arange(0, 10, 2)
    return {
        v: {
            n: {
                "step": steps,
                "name": f"conv{n}",
                "dist": np.linspace(0.1, 1.0, 5) * (k + 1) * (n > 1),
                "cosine": np.full(5, 0.9 - 0.2 * k),
                "grad_norm": np.ones(5),
                "shifted_grad_norm": np.ones(5),
            }
            for n in layers
        }
        for k, v in enumerate(variants)
    }


def test_ics_figure_draws_the_papers_layers():
    from landscape.plots import ics_figure, variant_color

    fig = ics_figure(_fake_ics())
    axes = fig.axes
    assert len(axes) == 6  # layers 5 and 9 (the recorded layer nearest to the paper's #10)
    assert "layer #5" in axes[0].get_title() and "layer #9" in axes[3].get_title()
    colors = {line.get_color() for line in axes[2].lines}
    assert colors == {variant_color("standard"), variant_color("batchnorm")}
    np.testing.assert_allclose(axes[2].lines[1].get_ydata(), 0.7)  # the cosine
    # The relative panel: dist / grad_norm (grad_norm 2 here for the second variant).
    fake = _fake_ics()
    fake["batchnorm"][5]["grad_norm"] = np.full(5, 2.0)
    rel = ics_figure(fake).axes[1].lines[1].get_ydata()
    np.testing.assert_allclose(rel, fake["batchnorm"][5]["dist"] / 2.0)
    assert len(ics_figure(_fake_ics(), layers=[1]).axes) == 3


def test_traced_layers_follow_the_forward_pass_for_any_network():
    """The jaxpr order equals the Linen interceptor's on VGG, and finds the order of NNX,
    Equinox and hand-written networks, whatever the order of their parameter trees."""
    import jax
    import jax.numpy as jnp

    from landscape.config import ModelConfig
    from landscape.ics import Layer, model_layers, traced_layers
    from landscape.models import create_model
    from landscape.network import Network, from_linen
    from landscape.train import build_network

    for placement in ("before", "after"):
        vgg = create_model("vgg11", width=0.125, norm="batchnorm", placement=placement)
        params, stats = from_linen(vgg).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        x = jnp.zeros((2, 32, 32, 3))
        expected = model_layers(vgg, {"params": params, "batch_stats": stats}, x[:1])
        assert traced_layers(from_linen(vgg), params, stats, x) == expected

    x = jnp.zeros((2, 6, 6, 3))
    for factory in ("own_models:nnx_net", "own_equinox:eqx_net"):
        network = build_network(ModelConfig(factory=factory), 3)
        params, state = network.init(jax.random.key(0), x[:1])
        names = [(layer.name, layer.modules) for layer in traced_layers(network, params, state, x)]
        hidden = "dense" if "nnx" in factory else "hidden"
        assert names == [("dense1", ((hidden,), ("norm",))), ("classifier", (("out",),))]

    def apply(params, state, inputs, *, train, rng=None):  # "z_first" runs first
        h = jnp.tanh(inputs.reshape(inputs.shape[0], -1) @ params["z_first"]["w"])
        return h @ params["a_second"]["w"] + params["a_second"]["b"], state

    mine = Network(lambda key, x: None, apply)
    params = {
        "a_second": {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)},
        "z_first": {"w": jnp.ones((108, 4))},
    }
    assert traced_layers(mine, params, {}, x) == [
        Layer("dense1", (("z_first",),)), Layer("classifier", (("a_second",),))
    ]  # fmt: skip
