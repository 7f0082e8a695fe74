"""The `hessian` command on a smoke run: records, skipped steps, figures, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from landscape.app.cli import app


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A 4-step smoke run of the BatchNorm VGG-11 at width 1/8, every checkpoint kept.

    One variant keeps the test short (the loop over variants is the same code); BatchNorm is
    the one whose mode matters.
    """
    from landscape.config import CheckpointConfig, preset
    from landscape.runs import run

    config = preset("smoke").replace(
        steps=4,
        batch_size=8,
        variants=("batchnorm",),
        eval_every=0,
        checkpoint=CheckpointConfig(every=1, max_to_keep=None, keep_period=None, keep_all=True),
    )
    assert config.model.width == 0.125
    run_dir = tmp_path_factory.mktemp("hessian") / "smoke"
    run(config, run_dir, probe_enabled=False, progress=False)
    return run_dir


def invoke(*args):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args])


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_records_skips_done_steps_and_draws_figures(smoke_run):
    args = ["hessian", smoke_run, "--every", "2", "--iterations", "3", "--top-k", "2"]
    result = invoke(*args, "--trace-probes", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "mode: train" in result.output
    for variant in ("batchnorm",):
        rows = rows_of(smoke_run / variant / "hessian.jsonl")
        assert [r["step"] for r in rows] == [0, 2, 4]  # checkpoints 0..4, every second
        for r in rows:
            assert (r["mode"], r["block"], r["batches"], r["iterations"]) == ("train", "all", 1, 3)
            assert len(r["top_eigenvalues"]) == 2 and r["lambda_max"] == r["top_eigenvalues"][0]
            assert r["top_eigenvalues"][0] >= r["top_eigenvalues"][1]
            assert np.isfinite(r["trace"]) and r["trace_stderr"] >= 0
            assert r["eos"] == pytest.approx(2 / r["lr"])
            assert r["eta_small"] == pytest.approx(1e-3 * r["lr"])
            # Not equal to ||H g|| / ||g||: a ReLU network's gradient also jumps where a step
            # crosses a kink, O(eta) like H g; the float64 test above checks a smooth network.
            assert r["beta_small"] > 0 and r["hg_ratio"] > 0
    before = (smoke_run / "batchnorm" / "hessian.jsonl").read_text()
    again = invoke(*args, "--trace-probes", "2", "--no-progress")
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output
    assert (smoke_run / "batchnorm" / "hessian.jsonl").read_text() == before

    # A block and two batches make other records of the same step (eval mode: a unit test).
    extra = invoke(
        "hessian", smoke_run, "--steps", "2", "--variants", "batchnorm", "--layers", "Dense_0/",
        "--batches", "2", "--iterations", "2", "--trace-probes", "0", "--no-progress",
    )  # fmt: skip
    assert extra.exit_code == 0, extra.output
    new = rows_of(smoke_run / "batchnorm" / "hessian.jsonl")[3:]
    assert [(r["step"], r["mode"], r["block"], r["batches"]) for r in new] == [
        (2, "train", "Dense_0/", 2)
    ]
    assert np.isnan(new[0]["trace"])

    from landscape.plots import plot_run
    from landscape.report import render_report

    names = {p.name for p in plot_run(smoke_run, formats=("png",))}
    assert {"sharpness.png", "curvature_link.png"} <= names
    assert "<h2>Curvature</h2>" in render_report(smoke_run)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layers", "NoSuchLayer"], "matches no parameter"),
        (["--steps", "999"], "no checkpoint at step 999"),
        (["--mode", "inference"], "unknown --mode"),
        (["--variants", "groupnorm"], "not in this run"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(smoke_run, extra, message):
    result = invoke("hessian", smoke_run, "--no-progress", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_on_a_bad_run_dir_exits_2(tmp_path):
    result = invoke("hessian", tmp_path / "nothing")
    assert result.exit_code == 2
    assert "not a landscape run" in result.output
    assert len(result.output.strip().splitlines()) == 1


# A notebook's session: some JAX work, then the public switch, then an estimate on a tiny MLP;
# prints the cache folder, how many programs JAX looked up in it and how many it loaded from it.
WARM_CACHE_SESSION = """
import json, sys
import jax, jax.numpy as jnp
import landscape
from landscape.curvature import make_hessian_estimator, stack_batches

jnp.arange(3.0).sum().block_until_ready()  # JAX at work before the cache is switched on
folder = landscape.enable_compilation_cache(sys.argv[1])
events = []
jax.monitoring.register_event_listener(lambda event, **_: events.append(event))
# JAX keeps only programs that compile for a second or more; the MLP's compile faster.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

def loss(params, batch):
    return jnp.mean((jnp.tanh(batch @ params["w"]) @ params["v"]) ** 2)

params = {"w": jnp.ones((3, 4)) / 3, "v": jnp.arange(4.0)}
estimate = make_hessian_estimator(loss, top_k=1, num_iters=4, trace_probes=2)
est = estimate(params, None, stack_batches([jnp.eye(3)]), jax.random.key(0))
looked_up = events.count("/jax/compilation_cache/compile_requests_use_cache")
loaded = events.count("/jax/compilation_cache/cache_hits")
print(json.dumps({"folder": folder, "looked_up": looked_up, "loaded": loaded,
                  "lambda_max": float(est.top_eigenvalues[0])}))
"""


def test_a_second_python_session_loads_the_estimator_from_the_cache(tmp_path):
    folder = tmp_path / "jax-cache"

    def session():
        out = subprocess.run(
            [sys.executable, "-c", WARM_CACHE_SESSION, str(folder)],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = session()
    assert first["folder"] == str(folder)
    assert first["looked_up"] >= 1 and first["loaded"] == 0
    assert any(folder.iterdir())
    second = session()
    # Every program the estimate needs, the estimator's own included, comes from the disk.
    assert second["loaded"] == second["looked_up"] == first["looked_up"]
    assert second["lambda_max"] == first["lambda_max"]
