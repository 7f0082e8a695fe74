"""The optimisation path on its PCA directions (Li et al. 2018, Sec. 7): the streaming PCA
against numpy's exact SVD, its memory, the projection, filter normalisation; and the workflow on
a tiny run (records, resume, the path's end at the origin). The command end to end:
integration/test_trajectory_cli.py."""

import tracemalloc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape.trajectory import Flattener, normalize_directions, path_axes, path_pca, project


def decaying_rows(n=60, p=400, rank=None, seed=0, offset=3.0):
    """Rows ``x_t - x_final`` of a path whose centred spectrum halves from one direction to
    the next (``rank`` directions in all; default n)."""
    rng = np.random.default_rng(seed)
    rank = rank or n
    basis = np.linalg.qr(rng.normal(size=(p, rank)))[0]
    mixing = np.linalg.qr(rng.normal(size=(n, rank)))[0]
    x = (mixing * (10.0 * 0.5 ** np.arange(rank))) @ basis.T + offset
    return x - x[-1]


def exact_pca(v, center=True):
    c = v - v.mean(axis=0) if center else v
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    return s, vt, float(np.sum(c**2))


def subspace_gap(a, b):
    """The spectral norm of the difference of the projectors on the rows of a and b."""
    return float(np.linalg.norm(a.T @ a - b.T @ b, 2))


@pytest.mark.parametrize("power_iterations, tol", [(0, 1e-3), (1, 1e-8)])
def test_streaming_pca_matches_numpys_exact_svd(power_iterations, tol):
    v = decaying_rows()
    pca = path_pca(
        lambda: iter(v), dtype=np.float64, oversampling=10, power_iterations=power_iterations
    )
    s, vt, squares = exact_pca(v)
    assert pca.count == 60 and pca.passes == 2 + power_iterations
    np.testing.assert_allclose(pca.explained_variance_ratio, s[:2] ** 2 / squares, rtol=tol)
    np.testing.assert_allclose(pca.explained_variance, s[:2] ** 2 / 59, rtol=tol)
    assert pca.total_variance == pytest.approx(squares / 59, rel=1e-12)  # exact, not estimated
    assert subspace_gap(pca.components, vt[:2]) < 10 * tol
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(2), atol=1e-12)


@pytest.mark.parametrize("center", [True, False])
def test_pca_is_exact_when_the_sketch_covers_the_rank(center):
    # Rank 3 < l = 12 although there are 50 rows; then also 8 rows in all (n <= l).
    for v in (decaying_rows(n=50, rank=3), decaying_rows(n=8)):
        pca = path_pca(lambda v=v: iter(v), components=3, dtype=np.float64, center=center)
        s, vt, squares = exact_pca(v, center)
        np.testing.assert_allclose(pca.singular_values, s[:3], rtol=1e-10)
        np.testing.assert_allclose(pca.explained_variance_ratio, s[:3] ** 2 / squares, rtol=1e-10)
        np.testing.assert_allclose(np.abs(pca.components @ vt[:3].T), np.eye(3), atol=1e-9)
        # Coordinates project the rows themselves: the final iterate (a zero row) at the origin.
        np.testing.assert_allclose(pca.coordinates, v @ pca.components.T, atol=1e-10)
        assert np.all(pca.coordinates[-1] == 0)
        assert np.all(pca.coordinates[0] >= 0)  # the sign convention: the start on the + side


def test_a_path_in_a_plane_is_reconstructed_exactly_from_two_components():
    v = decaying_rows(n=30, rank=2)
    pca = path_pca(lambda: iter(v), dtype=np.float64, oversampling=0)
    np.testing.assert_allclose(pca.coordinates @ pca.components, v, atol=1e-10)
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-12)


def test_pca_reads_the_rows_as_a_stream_twice_and_its_memory_does_not_grow_with_them():
    p, block = 20_000, 8
    calls, alive, peak_alive = [], set(), [0]

    def stream(n):
        def rows():
            calls.append(1)
            rng = np.random.default_rng(3)  # the same rows at every pass
            base = rng.normal(size=p)
            for t in range(n):
                row = base * (1 - t / n) + 0.01 * rng.normal(size=p)
                alive.add(id(row))
                weakref.finalize(row, alive.discard, id(row))
                peak_alive[0] = max(peak_alive[0], len(alive))
                yield row

        return rows

    peaks = {}
    for n in (50, 400):
        calls.clear()
        tracemalloc.start()
        try:
            pca = path_pca(stream(n), dtype=np.float64, block=block)
            _, peaks[n] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(calls) == 2 and pca.count == n
        assert pca.explained_variance_ratio[0] > 0.9  # the path is mostly a straight line
    assert peak_alive[0] <= 2  # each row is copied into the block buffer and let go
    # Eight times the rows, the same memory: the sketch, a block, the mean and temporaries of
    # their size, a fraction of the 64 MB the 400 rows take.
    assert peaks[400] < 1.1 * peaks[50]
    assert peaks[400] < 400 * p * 8 / 4, f"peak {peaks[400] / 1e6:.1f} MB"


def test_rows_that_change_between_passes_are_refused():
    v = decaying_rows(n=10)
    calls = []

    def rows():
        calls.append(1)
        return iter(v if len(calls) == 1 else v[:-1])

    with pytest.raises(ValueError, match=r"changed between passes: 9 rows.*saw 10"):
        path_pca(rows)


def test_projection_of_a_path_in_a_known_plane_gives_its_exact_coordinates():
    rng = np.random.default_rng(4)
    d = rng.normal(size=(2, 50))
    d[1] = 0.3 * d[0] + d[1]  # neither orthogonal nor of unit norm
    coords = rng.normal(size=(12, 2))
    path = coords @ d
    np.testing.assert_allclose(project(iter(path), d), coords, rtol=1e-10, atol=1e-12)
    # Off the plane: the least-squares coordinates, whose residual is orthogonal to the plane.
    off = path + rng.normal(size=path.shape)
    fitted = project(iter(off), d)
    np.testing.assert_allclose((off - fitted @ d) @ d.T, 0.0, atol=1e-10)


def toy_params():
    keys = jax.random.split(jax.random.key(7), 4)
    return {
        "conv": {
            "kernel": jax.random.normal(keys[0], (3, 3, 2, 4), jnp.float64),
            "bias": jax.random.normal(keys[1], (4,), jnp.float64),
        },
        "dense": {"kernel": 3.0 * jax.random.normal(keys[2], (5, 3), jnp.float64)},
    }


@pytest.mark.parametrize("ignore", ["biases-and-bn", "none"])
def test_flattening_ignores_biases_and_directions_are_filter_normalised(ignore):
    with jax.enable_x64(True):
        params = toy_params()
        flat = Flattener(params, ignore=ignore)
        assert flat.size == 3 * 3 * 2 * 4 + 4 + 5 * 3
        vector = flat.flatten(params, np.float64)
        back = flat.unflatten(vector)
        np.testing.assert_array_equal(back["conv"]["kernel"], params["conv"]["kernel"])
        bias_zero = np.all(np.asarray(back["conv"]["bias"]) == 0)
        assert bias_zero == (ignore == "biases-and-bn")
        rng = np.random.default_rng(0)
        comps = np.linalg.qr(rng.normal(size=(flat.size, 2)))[0].T
        normalised = normalize_directions(comps, params, flat)
        for row in normalised:
            tree = flat.unflatten(row)
            for a, b in (("conv", "kernel"), ("dense", "kernel")):
                w, d = np.asarray(params[a][b]), np.asarray(tree[a][b])
                np.testing.assert_allclose(
                    np.linalg.norm(d.reshape(-1, w.shape[-1]), axis=0),
                    np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0),
                    rtol=1e-12,
                )
            bias = np.asarray(tree["conv"]["bias"])
            if ignore == "biases-and-bn":
                assert np.all(bias == 0)
            else:  # a vector is one filter, rescaled to the bias's norm
                assert np.linalg.norm(bias) == pytest.approx(
                    np.linalg.norm(params["conv"]["bias"]), rel=1e-12
                )


def test_auto_axes_cover_the_path_and_the_origin():
    coords = np.array([[10.0, 1.0], [6.0, -0.5], [2.0, 0.2], [0.0, 0.0]])
    (lo_a, hi_a, n_a), (lo_b, hi_b, n_b) = path_axes(coords, 11)
    assert n_a == n_b == 11
    assert lo_a < 0 < 10 < hi_a and lo_b < -0.5 < 1.0 < hi_b
    assert hi_a - lo_a == pytest.approx(15.0)  # 10 widened by a quarter on each side
    assert hi_b - lo_b == pytest.approx(7.5)  # at least half as wide as the widest


# --- the workflow on a tiny run ----------------------------------------------------------------


class Interrupted(Exception):
    pass


@pytest.fixture
def path_run(keep_all_run, tmp_path):
    """A copy of the 6-step BatchNorm run with every checkpoint kept (records are written into
    it, and one test damages a checkpoint)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(keep_all_run, run_dir)
    return run_dir


def _flat_checkpoints(run_dir, steps, ignore="biases-and-bn"):
    from landscape.checkpoints import Checkpointer
    from landscape.data import synthetic_dataset
    from landscape.rundir import load_config
    from landscape.runs import Trainer

    config = load_config(run_dir)
    trainer = Trainer(config, "batchnorm", synthetic_dataset())
    template = trainer.initial_state()
    flat = Flattener(template.params, ignore=ignore)
    with Checkpointer(run_dir / "batchnorm" / "checkpoints") as ckpt:
        states = [ckpt.restore(s, template) for s in steps]
    return trainer, states, np.stack([flat.flatten(s.params, np.float64) for s in states])


def test_trajectory_records_resume_and_the_path_ends_at_the_origin(path_run):
    from landscape import surface_records as records
    from landscape.analyses.pictures import GridOptions
    from landscape.analyses.trajectory import trajectory
    from landscape.data import synthetic_dataset
    from landscape.train import step_batch

    dataset = synthetic_dataset()
    tasks = []

    def run(name, stop_after=None, **kw):
        def on_progress(task, done, total):
            tasks.append((task, done, total))
            if stop_after is not None and task == "batchnorm" and done >= stop_after:
                raise Interrupted

        kw = {"points": 3, "options": GridOptions(chunk=2), **kw}
        paths = trajectory(path_run, name=name, dataset=dataset, on_progress=on_progress, **kw)
        return records.load_record(paths["batchnorm"])

    full = run("full")
    header = full["header"]
    assert header["kind"] == "trajectory" and full["done"] == 9
    info = header["info"]
    assert info["path"]["steps"] == list(range(7)) and info["pca_passes"] == 2
    assert info["path"]["a"][-1] == 0.0 and info["path"]["b"][-1] == 0.0  # x_final
    assert abs(info["direction_cosine"]) < 1e-5 and info["direction_norms"] == pytest.approx(
        [1.0, 1.0], rel=1e-5
    )
    # Against the exact PCA of x_t - x_final over the 7 checkpoints (7 rows < the sketch: exact).
    trainer, states, flat = _flat_checkpoints(path_run, range(7))
    rows = flat - flat[-1]
    s, vt, squares = exact_pca(rows)
    np.testing.assert_allclose(info["explained_variance_ratio"], s[:2] ** 2 / squares, rtol=1e-4)
    coords = np.stack([info["path"]["a"], info["path"]["b"]], axis=1)
    np.testing.assert_allclose(np.abs(coords), np.abs(rows @ vt[:2].T), rtol=1e-4, atol=1e-6)
    # The grid covers the path and the origin.
    for axis, values in zip(full["axes"], coords.T, strict=True):
        assert axis[0] < min(values.min(), 0) and axis[-1] > max(values.max(), 0)
    assert (path_run / "batchnorm" / "surfaces" / "full.pca.npz").exists()

    # Interrupted after its first chunk, then run again: only the rest, and the same numbers.
    tasks.clear()
    with pytest.raises(Interrupted):
        run("cut", stop_after=2)
    assert records.load_record(path_run / "batchnorm" / "surfaces" / "cut.jsonl")["done"] == 2
    tasks.clear()
    resumed = run("cut")
    assert not [t for t in tasks if "PCA" in t[0]]  # the directions were kept: no pass again
    assert tasks[0] == ("batchnorm", 2, 9)  # the kept chunk is not evaluated again
    assert resumed["done"] == 9
    np.testing.assert_array_equal(resumed["loss"], full["loss"])
    np.testing.assert_array_equal(resumed["accuracy"], full["accuracy"])
    assert resumed["header"]["info"]["path"] == info["path"]

    # Other settings under the same name: refused before any checkpoint is read.
    tasks.clear()
    with pytest.raises(records.SurfaceError, match=r"other settings \(checkpoints 7 -> 4"):
        run("full", every=2)
    assert not tasks

    # The grid's centre is x_final itself: the loss of the final checkpoint on its own batch.
    fixed = run("fixed", grid=(-0.5, 0.5, 3))
    final = states[-1]
    batch = step_batch(final, trainer.train_source(6))
    expected = float(trainer.loss_fn(final.params, final.batch_stats, batch)[0])
    assert fixed["loss"][1, 1] == pytest.approx(expected, rel=1e-5)
    assert fixed["header"]["settings"]["range"] == [-0.5, 0.5, 3]


def test_a_damaged_checkpoint_is_left_out_and_filter_normalised_directions(path_run):
    from landscape import surface_records as records
    from landscape.analyses.trajectory import trajectory
    from landscape.checkpoints import STATE_FILE, DamagedCheckpointWarning
    from landscape.data import synthetic_dataset

    state_file = path_run / "batchnorm" / "checkpoints" / "3" / STATE_FILE
    state_file.write_bytes(state_file.read_bytes()[:100])
    with pytest.warns(DamagedCheckpointWarning, match="step 3 left out"):
        paths = trajectory(
            path_run, points=2, filter_normalize=True, every=1, dataset=synthetic_dataset()
        )
    info = records.load_record(paths["batchnorm"])["header"]["info"]
    assert info["path"]["steps"] == [0, 1, 2, 4, 5, 6] and info["skipped_steps"] == [3]
    assert info["pca_passes"] == 3  # the projection on the rescaled directions is a third pass
    assert info["path"]["a"][-1] == 0.0 and info["path"]["b"][-1] == 0.0
    # Each filter of each direction has the norm of x_final's filter there.
    _, states, _ = _flat_checkpoints(path_run, [6])
    final = states[0].params
    flat = Flattener(final)
    with np.load(path_run / "batchnorm" / "surfaces" / "trajectory.pca.npz") as saved:
        directions = saved["directions"]
    for row in directions:
        tree = flat.unflatten(row)
        for d, w in zip(jax.tree.leaves(tree), jax.tree.leaves(final), strict=True):
            d, w = np.asarray(d, np.float64), np.asarray(w, np.float64)
            if w.ndim < 2:
                assert np.all(d == 0)  # biases and BatchNorm parameters are left out
                continue
            np.testing.assert_allclose(
                np.linalg.norm(d.reshape(-1, w.shape[-1]), axis=0),
                np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0),
                rtol=1e-4,
            )


def test_figure_draws_the_path_with_its_ends_and_labels_the_axes_with_the_variance(tmp_path):
    import json

    from landscape import plots
    from landscape import surface_records as records
    from landscape.report import surface_section
    from landscape.results import RecordWriter

    (tmp_path / "config.json").write_text(json.dumps({"variants": ["standard", "batchnorm"]}))
    axes = [[-1.0, 3.0, 5], [-1.0, 1.0, 3]]
    a, b = records.grid_coords(axes).T
    for variant, ratios in (("standard", [0.8, 0.15]), ("batchnorm", [0.995, 0.004])):
        path = records.record_path(tmp_path, variant, "t")
        info = {
            "explained_variance_ratio": ratios,
            "path": {"steps": [0, 5, 10], "a": [2.5, 1.0, 0.0], "b": [0.5, -0.2, 0.0]},
        }
        settings = {"mode": "train", "batches": 1, "accuracy": False}
        header = {"kind": "trajectory", "settings": settings, "axes": axes, "info": info}
        records.open_record(path, header)
        with RecordWriter(path) as writer:
            writer.write([{"points": list(range(15)), "loss": (1.0 + a**2 + b**2).tolist()}])
    figures = plots.surface_figures(tmp_path)
    assert list(figures) == ["trajectory_t"]
    panels = figures["trajectory_t"].axes
    assert [ax.get_title() for ax in panels] == ["Standard", "Standard + BatchNorm"]
    assert panels[0].get_xlabel() == "1st PC: 80.00 %"
    assert panels[1].get_ylabel() == "2nd PC: 0.40 %"
    path_line, start, end = panels[0].lines[:3]
    np.testing.assert_array_equal(path_line.get_xdata(), [2.5, 1.0, 0.0])
    assert (start.get_xdata()[0], start.get_marker()) == (2.5, "o")
    assert (end.get_xdata()[0], end.get_ydata()[0], end.get_marker()) == (0.0, 0.0, "*")
    assert {t.get_text() for t in panels[0].texts} >= {"step 0 (init)", "step 10 (final)"}
    caption = next(p for p in surface_section(tmp_path) if "Share of the path" in p)
    assert "standard 80.0% and 15.0%; batchnorm 99.5% and 0.4%" in caption
