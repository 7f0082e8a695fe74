"""Distributional stability: sown pre-activations, their percentiles, the command, the figure."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from landscape.cli import app
from typer.testing import CliRunner

from landscape.activations import (
    activation_record,
    distribution_stats,
    layer_stats,
    make_preactivation_fn,
    record_activations,
    sown_preactivations,
)
from landscape.models import create_model, init_variables
from landscape.results import ACTIVATIONS_FILE, RecordWriter, load_activations, read_rows


def test_percentiles_match_numpy_on_a_hand_made_batch():
    values = np.arange(2 * 3 * 3 * 4, dtype=np.float64).reshape(2, 3, 3, 4) ** 1.5 % 17 - 5
    stats = distribution_stats(values, unit=2)
    np.testing.assert_allclose(stats["percentiles"], np.percentile(values, [15, 50, 85]))
    one = values[..., 2].ravel()  # channel 2 over every example and position
    np.testing.assert_allclose(stats["unit_percentiles"], np.percentile(one, [15, 50, 85]))
    assert float(stats["mean"]) == pytest.approx(values.mean(), abs=1e-12)
    assert float(stats["var"]) == pytest.approx(values.var(), abs=1e-12)
    assert float(stats["unit_mean"]) == pytest.approx(one.mean(), abs=1e-12)
    assert float(stats["unit_var"]) == pytest.approx(one.var(), abs=1e-12)
    # By hand: units 0 and 1 of 0..19 laid out as (10, 2); unit 1 is 1, 3, ..., 19. Linear
    # interpolation: the 15th percentile of 0..19 sits at rank 2.85, of unit 1 at rank 1.35.
    hand = distribution_stats(jnp.arange(20.0).reshape(10, 2), unit=1)
    np.testing.assert_allclose(hand["percentiles"], [2.85, 9.5, 16.15], atol=1e-12)
    np.testing.assert_allclose(hand["unit_percentiles"], [3.7, 10.0, 16.3], atol=1e-12)
    assert hand["unit_mean"] == 10.0 and hand["unit_var"] == pytest.approx(33.0)


def _conv(x, p):
    y = jax.lax.conv_general_dilated(
        x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p["bias"]


def _batchnorm(x, p, eps=1e-5):
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def _pool(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@pytest.mark.parametrize(
    ("norm", "placement"), [("none", "before"), ("batchnorm", "before"), ("batchnorm", "after")]
)
def test_sown_preactivation_equals_a_manual_forward_pass(norm, placement):
    """VGG-11 starts conv1, pool, conv2: the ReLU inputs of conv1 and conv2 written out by hand."""
    model = create_model("vgg11", width=0.0625, norm=norm, placement=placement, conv_impl="xla")
    variables = init_variables(model, jax.random.key(1))
    images = jax.random.normal(jax.random.key(2), (6, 32, 32, 3))
    sown = sown_preactivations(model, variables, images, train=True)
    assert sorted(sown) == list(range(1, 9))
    p = variables["params"]
    z1 = _conv(images, p["Conv3x3_0"])
    if norm == "batchnorm" and placement == "before":
        pre1 = _batchnorm(z1, p["BatchNorm_0"])
        z2 = _conv(_pool(jax.nn.relu(pre1)), p["Conv3x3_1"])
        pre2 = _batchnorm(z2, p["BatchNorm_1"])
    elif norm == "batchnorm":  # after the ReLU: its input is the conv's output
        pre1 = z1
        pre2 = _conv(_pool(_batchnorm(jax.nn.relu(z1), p["BatchNorm_0"])), p["Conv3x3_1"])
    else:
        pre1 = z1
        pre2 = _conv(_pool(jax.nn.relu(z1)), p["Conv3x3_1"])
    np.testing.assert_allclose(sown[1], pre1, atol=2e-5)
    np.testing.assert_allclose(sown[2], pre2, atol=2e-5)
    # The jitted function returns the sown arrays; the unit is clipped to each layer's width.
    preact_fn = make_preactivation_fn(model, (2, 1))
    key = jax.random.key_data(jax.random.key(0))
    arrays = preact_fn(variables["params"], variables["batch_stats"], images, key)
    np.testing.assert_allclose(arrays[0], sown[2], rtol=1e-5, atol=1e-5)
    stats = layer_stats(arrays, unit=100)
    expected = distribution_stats(sown[2], unit=sown[2].shape[-1] - 1)
    for name in ("percentiles", "mean", "var", "unit_percentiles", "unit_var"):
        np.testing.assert_allclose(stats[name][0], expected[name], rtol=1e-5, atol=1e-6)
    assert stats["percentiles"].shape == (2, 3)


def test_eval_mode_uses_the_running_averages():
    model = create_model("vgg11", width=0.0625, norm="batchnorm", conv_impl="xla")
    variables = init_variables(model, jax.random.key(1))
    images = 3.0 + jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
    pre = sown_preactivations(model, variables, images, train=False)[1]
    # Running averages at initialisation are mean 0, variance 1: BN is nearly the identity.
    z1 = _conv(images, variables["params"]["Conv3x3_0"])
    np.testing.assert_allclose(pre, z1 / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-5)


def test_activation_record_consecutive_change():
    stats = {k: np.array([1.0, 2.0]) for k in ("mean", "var", "unit_mean", "unit_var")}
    stats |= {k: np.zeros((2, 3)) for k in ("percentiles", "unit_percentiles")}
    after = {k: v + 0.5 if v.ndim == 1 else v for k, v in stats.items()}
    row = activation_record(3, [1, 4], stats, after, unit=0, examples=10, bn_mode="train")
    assert row["layer_name"] == ["conv1", "conv4"] and row["q"] == [15.0, 50.0, 85.0]
    assert row["d_mean"] == [0.5, 0.5] and row["d_unit_var"] == [0.5, 0.5]
    assert "d_mean" not in activation_record(3, [1], stats, None, 0, 10, "eval")
    json.dumps(row)


def test_consecutive_change_matches_the_saved_next_checkpoint(keep_all_run):
    from landscape.data import synthetic_dataset

    written = record_activations(
        keep_all_run,
        steps=[2, 3],
        layers=[1, 5],
        examples=40,
        progress=False,
        dataset=synthetic_dataset(),
    )
    rows = {r["step"]: r for r in read_rows(written["batchnorm"]) if r["examples"] == 40}
    assert sorted(rows) == [2, 3] and rows[2]["bn_mode"] == "train"
    for key in ("mean", "var", "unit_mean"):
        # Step 3 recomputed from checkpoint 2 with the train step is checkpoint 3.
        change = np.subtract(rows[3][key], rows[2][key])
        np.testing.assert_allclose(rows[2][f"d_{key}"], change, rtol=1e-4, atol=1e-7)
    assert np.any(np.abs(rows[2]["d_mean"]) > 0)


def test_noisy_change_is_the_next_steps_own_draw(tmp_path):
    """For noisy BatchNorm, step t + 1 is measured with its own noise (what training at t + 1
    drew): the change recorded at t is the record at t + 1 minus the record at t, noise and all."""
    from landscape.config import CheckpointConfig, ModelConfig, ProbeConfig, RunConfig
    from landscape.data import synthetic_dataset
    from landscape.runs import run

    data = synthetic_dataset(seed=0, num_train=64, num_test=40)
    config = RunConfig(
        preset="test",
        data="synthetic",
        seed=2,
        steps=3,
        batch_size=8,
        eval_every=0,
        eval_batches=1,
        log_every=1,
        variants=("noisy_batchnorm",),
        model=ModelConfig(width=0.0625, conv_impl="xla"),
        checkpoint=CheckpointConfig(every=1, keep_all=True),
        probe=ProbeConfig(enabled=False),
    )
    run(config, tmp_path / "run", progress=False, dataset=data)
    written = record_activations(
        tmp_path / "run", steps=[1, 2], layers=[2], examples=16, progress=False, dataset=data
    )
    rows = {r["step"]: r for r in read_rows(written["noisy_batchnorm"])}
    for key in ("mean", "var", "unit_mean"):
        change = np.subtract(rows[2][key], rows[1][key])
        np.testing.assert_allclose(rows[1][f"d_{key}"], change, rtol=1e-4, atol=1e-6)
    # The injected per-unit shift U(-0.5, 0.5) moves one unit's mean by far more than a step of
    # BatchNorm training does on its own.
    assert abs(rows[1]["d_unit_mean"][0]) > 1e-2


def test_activations_command(keep_all_run):
    runner = CliRunner()
    args = ["activations", str(keep_all_run), "--every", "3", "--examples", "30"]
    args += ["--layers", "1,8", "--no-progress", "--unit", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    path = keep_all_run / "batchnorm" / ACTIVATIONS_FILE
    rows = [r for r in read_rows(path) if r["layer"] == [1, 8]]
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert all(len(r["percentiles"]) == 2 and len(r["d_var"]) == 2 for r in rows)
    lines = path.read_text().count("\n")
    assert runner.invoke(app, args).exit_code == 0
    assert path.read_text().count("\n") == lines  # a rerun skips what is done
    loaded = load_activations(keep_all_run)["batchnorm"]
    assert loaded[8]["percentiles"].shape[1] == 3 and loaded[8]["unit"] == 1
    for bad, message in (
        (["activations", str(keep_all_run / "none")], "not a landscape run"),
        (["activations", str(keep_all_run), "--layers", "9"], "numbered 1..8"),
        (["activations", str(keep_all_run), "--bn-mode", "test"], "--bn-mode"),
        (["activations", str(keep_all_run), "--examples", "1"], "--examples"),
        (["activations", str(keep_all_run), "--steps", "a"], "--steps"),
    ):
        out = runner.invoke(app, [*bad, "--no-progress"])
        assert out.exit_code == 2, out.output
        assert message in out.output and "Traceback" not in out.output
        assert len(out.output.strip().splitlines()) == 1


# --- figures and report (no JAX needed) -----------------------------------------------------------


def _write_fake_records(run_dir, *, changes=True):
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"variants": ["standard", "batchnorm"]}))
    for k, variant in enumerate(("standard", "batchnorm")):
        (run_dir / variant).mkdir()
        with RecordWriter(run_dir / variant / ACTIVATIONS_FILE) as w:
            for step in range(0, 10, 2):
                p = [[-1.0 - step - k, 0.1 * step, 1.0 + step + k]] * 2
                row = {
                    "step": step,
                    "layer": [1, 5],
                    "layer_name": ["conv1", "conv5"],
                    "q": [15.0, 50.0, 85.0],
                    "percentiles": p,
                    "unit_percentiles": p,
                    **{s: [float(step), 2.0] for s in ("mean", "var", "unit_mean", "unit_var")},
                    "unit": 0,
                    "bn_mode": "train" if variant == "batchnorm" else "none",
                }
                if changes:
                    row |= {f"d_{s}": [0.1, -0.2] for s in ("mean", "var", "unit_mean", "unit_var")}
                w.write([row])
        with RecordWriter(run_dir / variant / "ics.jsonl") as w:
            for step in range(3):
                w.write(
                    [
                        {
                            "step": step,
                            "layer": [1, 5, 9],
                            "layer_name": ["conv1", "conv5", "classifier"],
                            **{f: [0.0, 0.5 + k, 0.1] for f in ("dist", "grad_norm")},
                            "cosine": [1.0, 0.9, 0.99],
                            "shifted_grad_norm": [1.0, 1.0, 1.0],
                            "bn_mode": "train",
                        }
                    ]
                )


def test_activations_figure_bands_and_changes(tmp_path):
    from landscape.plots import activations_figure, variant_color

    _write_fake_records(tmp_path / "run")
    records = load_activations(tmp_path / "run")
    fig = activations_figure(records)
    assert len(fig.axes) == 6  # layers 1 and 5, three panels each
    band_ax, mean_ax, var_ax = fig.axes[:3]
    assert "15/50/85th percentiles" in band_ax.get_title() and "unit 0" in band_ax.get_title()
    assert "Δ mean" in mean_ax.get_title() and mean_ax.get_yscale() == "log"
    medians = [ln for ln in band_ax.lines if ln.get_linewidth() > 1]
    assert [ln.get_color() for ln in medians] == [
        variant_color("standard"),
        variant_color("batchnorm"),
    ]
    np.testing.assert_allclose(medians[0].get_ydata(), 0.1 * np.arange(0, 10, 2))
    np.testing.assert_allclose(var_ax.lines[0].get_ydata(), 0.1)  # |Δ var| of layer 1
    np.testing.assert_allclose(fig.axes[5].lines[0].get_ydata(), 0.2)  # |-0.2| of layer 5
    plain = activations_figure(load_activations(_fresh(tmp_path)), layers=[5])
    assert len(plain.axes) == 3 and plain.axes[1].get_title().endswith("mean")


def _fresh(tmp_path):
    _write_fake_records(tmp_path / "plain", changes=False)
    return tmp_path / "plain"


def test_plot_and_report_include_the_shift_figures(tmp_path):
    from landscape.plots import run_figures
    from landscape.report import render_report

    _write_fake_records(tmp_path / "run")
    figures = run_figures(tmp_path / "run")
    assert {"internal_covariate_shift", "activations"} <= set(figures)
    page = render_report(tmp_path / "run")
    assert "Internal covariate shift and distributional stability" in page
    assert page.count("data:image/png;base64") == 2
    assert "5 (conv5)" in page  # the ICS medians table
