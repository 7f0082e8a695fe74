"""The deep linear network of App. A.1: model, data, loss, probe closed forms, runs (the CLI: integration/test_dln_cli.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import with_

from landscape.config import CheckpointConfig, ModelConfig, preset
from landscape.data import DataError, batch_indices, dln_dataset, load_dataset
from landscape.models import create_dln, create_model, loss_for_arch
from landscape.probe import gradient_curvature, probe
from landscape.train import make_loss_fn


def _kernels(params) -> list[np.ndarray]:
    """The layers' kernels in order (Flax's Dense computes x @ kernel, i.e. W = kernel^T)."""
    return [np.asarray(params[f"Dense_{i}"]["kernel"]) for i in range(len(params))]


def _init(model, x, seed=0):
    """Parameters and BatchNorm statistics in the input's dtype (BatchNorm's are float32)."""
    variables = model.init(jax.random.key(seed), x, train=False)
    params = jax.tree.map(lambda p: p.astype(x.dtype), variables["params"])
    return params, variables.get("batch_stats", {})


def _data64(n=50, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((dim, dim))
    x = rng.standard_normal((n, dim))
    return a, x, x @ a.T


# --- the model --------------------------------------------------------------------------------


def test_forward_is_the_product_of_25_layers_in_float64():
    with jax.enable_x64(True):
        model = create_dln("dln", param_dtype=jnp.float64)
        _, x, _ = _data64()
        params, stats = _init(model, jnp.asarray(x))
        assert stats == {} and len(params) == 25
        kernels = _kernels(params)
        assert all(k.shape == (10, 10) and k.dtype == np.float64 for k in kernels)
        assert sum(k.size for k in kernels) == 25 * 100  # no biases, as ||W_25...W_1 x - Ax||^2
        product = np.eye(10)
        for k in kernels:  # W_25 ... W_1 with W_i = kernel_i^T
            product = k.T @ product
        out = np.asarray(model.apply({"params": params}, jnp.asarray(x), train=True))
        np.testing.assert_allclose(out, x @ product.T, rtol=1e-12, atol=1e-12)
        # Glorot on a square 10x10 layer: variance 1/fan_in, so the scale of x is kept on average.
        assert np.var(np.stack(kernels)) == pytest.approx(0.1, rel=0.15)


def test_batchnorm_dln_normalises_every_hidden_layer_in_float64():
    with jax.enable_x64(True):
        model = create_dln("dln3", norm="batchnorm", param_dtype=jnp.float64)
        _, x, _ = _data64(n=64)
        params, stats = _init(model, jnp.asarray(x))
        # BatchNorm after the two hidden layers, the read-out layer is plain.
        assert sorted(stats) == ["BatchNorm_0", "BatchNorm_1"]
        rng = np.random.default_rng(1)
        gammas = [1 + 0.1 * rng.standard_normal(10) for _ in range(2)]
        betas = [0.1 * rng.standard_normal(10) for _ in range(2)]
        for i in range(2):
            params[f"BatchNorm_{i}"] = {
                "scale": jnp.asarray(gammas[i]),
                "bias": jnp.asarray(betas[i]),
            }
        k = _kernels({n: params[n] for n in ("Dense_0", "Dense_1", "Dense_2")})
        h = x
        for i in range(2):
            h = h @ k[i]
            mu, var = h.mean(0), h.var(0)  # biased variance over the batch (SPEC)
            h = gammas[i] * (h - mu) / np.sqrt(var + 1e-5) + betas[i]
        expected = h @ k[2]
        out, _ = model.apply(
            {"params": params, "batch_stats": stats},
            jnp.asarray(x),
            train=True,
            mutable=["batch_stats"],
        )
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-10, atol=1e-10)


def test_model_names_and_loss_choice():
    assert create_model("dln").depth == 25 and create_model("dln7").depth == 7
    assert create_model("dln", width=2.0).features == 20
    assert loss_for_arch("dln") == "sum_squared_error" == loss_for_arch("dln3")
    assert loss_for_arch("vgg11") == "cross_entropy"
    for bad in ("dln0", "dlnx", "dln-3"):
        with pytest.raises(ValueError, match="unknown architecture"):
            create_model(bad)
    with pytest.raises(ValueError, match="unknown normalisation"):
        create_model("dln", norm="instancenorm")


# --- the loss and its gradient -----------------------------------------------------------------


@pytest.mark.parametrize("loss_name", ["sum_squared_error", "squared_error"])
def test_loss_and_gradient_of_a_3_layer_dln_match_the_closed_form(loss_name):
    """L = c ||W3 W2 W1 X - A X||_F^2 (X with samples as columns), c = 1 for the DLN's sum over
    samples, 1/n for the mean. With R = W3 W2 W1 X - Y: dL/dW3 = 2c R (W2 W1 X)^T, dL/dW2 =
    2c W3^T R (W1 X)^T, dL/dW1 = 2c (W3 W2)^T R X^T."""
    with jax.enable_x64(True):
        model = create_dln("dln3", param_dtype=jnp.float64)
        _, x, y = _data64(n=40)
        params, stats = _init(model, jnp.asarray(x), seed=4)
        loss_fn = make_loss_fn(model, loss_name)
        batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
        (loss, (new_stats, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, batch
        )
        w1, w2, w3 = (k.T for k in _kernels(params))
        xs, ys, n = x.T, y.T, x.shape[0]
        c = 1.0 if loss_name == "sum_squared_error" else 1.0 / n
        r = w3 @ w2 @ w1 @ xs - ys
        assert float(loss) == pytest.approx(c * np.sum(r**2), rel=1e-12)
        expected = {
            "Dense_2": 2 * c * r @ (w2 @ w1 @ xs).T,
            "Dense_1": 2 * c * w3.T @ r @ (w1 @ xs).T,
            "Dense_0": 2 * c * (w3 @ w2).T @ r @ xs.T,
        }
        for name, g in expected.items():  # the kernel is W^T, so is its gradient
            np.testing.assert_allclose(np.asarray(grads[name]["kernel"]), g.T, rtol=1e-10)
        assert new_stats == {} and out.shape == (n, 10)


# --- the probe against closed forms ----------------------------------------------------------


@pytest.mark.parametrize(
    ("loss_name", "lr"), [("sum_squared_error", 1e-6), ("squared_error", 1e-3)]
)
def test_probe_of_a_1_layer_dln_matches_the_quadratic_closed_form(loss_name, lr):
    """With one layer the loss is quadratic in W: L(W + D) = L(W) + <G, D> + tr(D S D^T) with
    S = c X^T X and G = 2 (W S - c Y^T X), c = 1 (sum over samples) or 1/n (mean). Hence
    L(W - eta G) = L - eta ||G||^2 + eta^2 tr(G S G^T), ||grad L(W - eta G) - G|| =
    2 eta ||G S||, beta = 2 ||G S|| / ||G|| (SPEC's quadratic identities, Hessian 2 S)."""
    with jax.enable_x64(True):
        ds = dln_dataset(seed=2)
        x, y = ds.train_images.astype(np.float64), ds.train_labels.astype(np.float64)
        model = create_dln("dln1", param_dtype=jnp.float64)
        params, stats = _init(model, jnp.asarray(x), seed=1)
        loss_fn = make_loss_fn(model, loss_name)
        batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
        etas = np.linspace(0.01, 30, 8) * lr  # the paper's DLN grid, [1/100, 30] x lr
        result = probe(loss_fn, params, batch, jnp.asarray(etas), model_state=stats)

        w, n = _kernels(params)[0].T, x.shape[0]
        c = 1.0 if loss_name == "sum_squared_error" else 1.0 / n
        s = c * x.T @ x
        grad = 2 * (w @ s - c * y.T @ x)
        loss0 = c * np.sum((x @ w.T - y) ** 2)
        loss = loss0 - etas * np.sum(grad**2) + etas**2 * np.trace(grad @ s @ grad.T)
        gs = np.linalg.norm(grad @ s)
        np.testing.assert_allclose(np.asarray(result.loss0), loss0, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(result.grad_norm), np.linalg.norm(grad), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(result.loss), loss, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(result.grad_dist), 2 * etas * gs, rtol=1e-10)
        beta = np.asarray(result.grad_dist) / np.asarray(result.step_norm)
        np.testing.assert_allclose(beta, 2 * gs / np.linalg.norm(grad), rtol=1e-10)
        assert np.all(np.diff(loss) < 0)  # all of the grid descends on this problem


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_probe_of_the_25_layer_dln_tends_to_the_hessian_curvature(norm):
    """As eta -> 0 the effective beta tends to ||H g|| / ||g|| (SPEC): one HVP at initialisation."""
    with jax.enable_x64(True):
        ds = dln_dataset(seed=0, num_train=200)
        batch = {"image": jnp.asarray(ds.train_images, jnp.float64)}
        batch["label"] = jnp.asarray(ds.train_labels, jnp.float64)
        model = create_dln("dln", norm=norm, param_dtype=jnp.float64)
        params, stats = _init(model, batch["image"])
        loss_fn = make_loss_fn(model, loss_for_arch("dln"))
        curvature = float(gradient_curvature(loss_fn, params, batch, model_state=stats))
        etas = jnp.asarray([1e-12, 2e-12])  # the summed loss is 200x the mean here
        result = probe(loss_fn, params, batch, etas, model_state=stats)
        beta = np.asarray(result.grad_dist) / np.asarray(result.step_norm)
        # beta(eta) = ||H g|| / ||g|| + O(eta) (the third derivative along g, large for the
        # BatchNorm network); extrapolating linearly to eta = 0 removes the O(eta) term.
        np.testing.assert_allclose(beta, curvature, rtol=1e-3)
        np.testing.assert_allclose(2 * beta[0] - beta[1], curvature, rtol=1e-6)
        assert curvature > 0


# --- data ---------------------------------------------------------------------------------------


def test_dln_data_is_y_equals_a_x_from_its_own_seed():
    a, b = dln_dataset(seed=5), dln_dataset(seed=5)
    assert a.checksum == b.checksum and a.checksum != dln_dataset(seed=6).checksum
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert a.task == "regression" and a.is_synthetic and a.num_outputs == 10 and a.classes == ()
    assert a.train_images.shape == (1000, 10) and a.test_images.shape == (1000, 10)
    assert a.train_images.dtype == np.float32 and a.train_labels.dtype == np.float32
    # One linear map A explains the training targets and predicts the held-out ones.
    x, y = a.train_images.astype(np.float64), a.train_labels.astype(np.float64)
    a_t = np.linalg.lstsq(x, y, rcond=None)[0]
    test_pred = a.test_images.astype(np.float64) @ a_t
    np.testing.assert_allclose(test_pred, a.test_labels, atol=1e-4)
    assert np.std(a_t) == pytest.approx(1.0, rel=0.4)  # i.i.d. standard normal entries
    assert abs(float(x.mean())) < 0.1 and float(x.std()) == pytest.approx(1.0, rel=0.05)
    assert load_dataset("dln:5").checksum == a.checksum
    assert load_dataset("dln").checksum == dln_dataset(0).checksum
    with pytest.raises(DataError, match="dln:SEED"):
        load_dataset("dln:x")


def test_full_batch_is_the_whole_set_in_order_every_step():
    for step in (0, 1, 17):
        np.testing.assert_array_equal(batch_indices(3, step, 1000, 1000), np.arange(1000))


# --- runs, records, figures -------------------------------------------------------------------


def test_batchnorm_dln_trains(tiny_dln_config):
    from landscape.runs import Trainer

    cfg = with_(tiny_dln_config, model={"arch": "dln"})  # the paper's lr, 1e-6
    ds = dln_dataset(seed=0)
    trainer = Trainer(cfg, "batchnorm", ds)
    state = trainer.initial_state()
    batch = trainer.train_source(0)
    losses = []
    for _ in range(10):
        new_state, out = trainer.train_step(state, batch)
        losses.append(float(out.loss))
        state = new_state
    assert losses[-1] < 0.85 * losses[0]  # measured: 100,225 -> 65,864 in 10 steps
    assert np.isnan(float(out.accuracy))  # a regression has no accuracy
    assert len(state.batch_stats) == 24  # BatchNorm after each of the 24 hidden layers
    test = trainer.eval_step(
        state.params, state.batch_stats, next(trainer.test_source.chunks(1000))
    )
    assert np.isfinite(float(test[0])) and np.isnan(float(test[1]))


def test_a_vgg_on_dln_data_is_refused(tiny_dln_config, tmp_path):
    from landscape.config import ConfigError
    from landscape.runs import run

    cfg = tiny_dln_config.replace(model=ModelConfig(arch="vgg11"))
    # run() validates the configuration first (landscape.config.validate), as the command does.
    with pytest.raises(ConfigError, match="arch vgg11 with data dln: the deep linear network"):
        run(cfg, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_presets_follow_the_papers_protocol():
    paper = preset("dln-paper")
    assert paper.model.arch == "dln" and paper.data == "dln" and paper.steps == 10_000
    assert paper.batch_size == 1000 and paper.optimizer.learning_rate == 1e-6
    assert paper.optimizer.name == "sgd" and paper.variants == ("standard", "batchnorm")
    grid = paper.probe.grid(1e-6)
    assert grid[0] == pytest.approx(1e-8) and grid[-1] == pytest.approx(3e-5)
    assert paper.probe.every == 1 and paper.checkpoint == CheckpointConfig(1, 5, 500)
    quick = preset("dln-quick")
    assert quick.steps == 1000 and quick.optimizer == paper.optimizer and quick.probe == paper.probe
    assert quick.checkpoint.every == 5  # every 5th step checkpointed, hence probed
