"""Loss-landscape pictures: filter normalisation, closed forms, chunking, resume (on a
trained run, sharded, through the command: integration/test_surfaces_runs.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape import surface_records as records
from landscape import surfaces
from landscape.results import DamagedRecordWarning


def toy_params(dtype=jnp.float32):
    """A conv kernel (HWIO), a Dense kernel (in, out), a bias and BatchNorm's scale/offset."""
    keys = jax.random.split(jax.random.key(7), 5)
    return {
        "conv": {
            "kernel": jax.random.normal(keys[0], (3, 3, 2, 4), dtype),
            "bias": jax.random.normal(keys[1], (4,), dtype),
        },
        "bn": {
            "scale": 1.0 + jax.random.uniform(keys[2], (4,), dtype),
            "bias": jnp.zeros(4, dtype),
        },
        "dense": {"kernel": 3.0 * jax.random.normal(keys[3], (5, 3), dtype)},
    }


@pytest.mark.parametrize("ignore", ["biases-and-bn", "none"])
def test_filter_normalisation_gives_each_filter_the_models_norm(ignore):
    with jax.enable_x64(True):
        params = toy_params(jnp.float64)
        d = surfaces.random_direction(jax.random.key(0), params, ignore=ignore)
        # Conv HWIO: filter j is kernel[..., j]; Dense (in, out): column j.
        for leaf in (("conv", "kernel"), ("dense", "kernel")):
            w, v = params[leaf[0]][leaf[1]], d[leaf[0]][leaf[1]]
            axes = tuple(range(w.ndim - 1))
            np.testing.assert_allclose(
                np.linalg.norm(np.asarray(v).reshape(-1, w.shape[-1]), axis=0),
                np.sqrt(np.sum(np.asarray(w) ** 2, axis=axes)),
                rtol=1e-12,
            )
            assert not np.allclose(v, w)  # a random direction, not the weights
        vectors = (d["conv"]["bias"], d["bn"]["scale"], d["bn"]["bias"])
        if ignore == "biases-and-bn":
            assert all(np.all(np.asarray(v) == 0) for v in vectors)
        else:
            for v, w in zip(vectors, (params["conv"]["bias"], *params["bn"].values()), strict=True):
                np.testing.assert_allclose(np.linalg.norm(v), np.linalg.norm(w), rtol=1e-12)
        # Seeded with explicit keys: same key, same direction; the 2D pair's first is the 1D one.
        (one,) = surfaces.random_directions(jax.random.key(0), params, 1, ignore=ignore)
        two = surfaces.random_directions(jax.random.key(0), params, 2, ignore=ignore)
        np.testing.assert_array_equal(two[0]["dense"]["kernel"], one["dense"]["kernel"])
        assert not np.allclose(two[1]["dense"]["kernel"], one["dense"]["kernel"])


def test_orthogonalised_second_direction_and_gradient_direction():
    with jax.enable_x64(True):
        params = toy_params(jnp.float64)
        d1, d2 = surfaces.random_directions(jax.random.key(1), params, 2, orthogonalize=True)
        vdot = sum(
            np.vdot(a, b) for a, b in zip(jax.tree.leaves(d1), jax.tree.leaves(d2), strict=True)
        )
        assert abs(vdot) < 1e-10
        grad = jax.tree.map(lambda w: 0.01 * w + 0.5, params)
        g = surfaces.gradient_direction(grad, params)
        kept = [("conv", "kernel"), ("dense", "kernel")]
        x_norm = np.sqrt(sum(np.sum(np.asarray(params[a][b]) ** 2) for a, b in kept))
        g_norm = np.sqrt(sum(np.sum(np.asarray(grad[a][b]) ** 2) for a, b in kept))
        for a, b in kept:  # -g scaled to ||x||, like a filter-normalised direction
            np.testing.assert_allclose(g[a][b], -grad[a][b] * x_norm / g_norm, rtol=1e-12)
        assert np.all(np.asarray(g["conv"]["bias"]) == 0)


def quadratic_problem():
    """L(x) = 1/2 x^T A x over a pytree x = {"params": {"w": (4,)}, "batch_stats": {}}."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(4, 4))
    a = m @ m.T + np.eye(4)
    x0 = rng.normal(size=4)
    d1, d2 = rng.normal(size=4), rng.normal(size=4)

    def metric_fn(point, batch):
        w = point["params"]["w"]
        return jnp.stack([0.5 * w @ batch["A"] @ w, jnp.sum(w)])

    return a, x0, d1, d2, metric_fn


def as_point(v):
    return {"params": {"w": jnp.asarray(v)}, "batch_stats": {}}


@pytest.mark.parametrize("strategy", ["map", "vmap"])
def test_2d_surface_of_a_quadratic_is_the_closed_form_and_chunking_matches_a_loop(strategy):
    with jax.enable_x64(True):
        a, x0, d1, d2, metric_fn = quadratic_problem()
        axes = [(-1.0, 1.5, 6), (-2.0, 1.0, 5)]
        coords = records.grid_coords(axes)
        batches = {"A": jnp.asarray(a)[None]}
        grid_fn = surfaces.make_grid_fn(metric_fn, strategy=strategy, map_batch_size=2)
        out = surfaces.evaluate_grid(
            grid_fn, as_point(x0), (as_point(d1), as_point(d2)), coords, batches, chunk=4
        )
        assert out.shape == (30, 2)
        # L(x + a d1 + b d2) = 1/2 (x + a d1 + b d2)^T A (x + a d1 + b d2), point by point.
        for (ca, cb), value in zip(coords, out[:, 0], strict=True):
            x = x0 + ca * d1 + cb * d2
            assert value == pytest.approx(0.5 * x @ a @ x, rel=1e-12)
        # Expanded: L(x) + a x^T A d1 + b x^T A d2 + a^2/2 d1^T A d1 + ab d1^T A d2 + b^2/2 ...
        grid_a, grid_b = np.meshgrid(*(records.axis_values(ax) for ax in axes), indexing="ij")
        closed = (
            0.5 * x0 @ a @ x0
            + grid_a * (x0 @ a @ d1)
            + grid_b * (x0 @ a @ d2)
            + 0.5 * grid_a**2 * (d1 @ a @ d1)
            + grid_a * grid_b * (d1 @ a @ d2)
            + 0.5 * grid_b**2 * (d2 @ a @ d2)
        )
        np.testing.assert_allclose(out[:, 0].reshape(6, 5), closed, rtol=1e-12)
        loop = surfaces.evaluate_loop(
            metric_fn, as_point(x0), (as_point(d1), as_point(d2)), coords, batches
        )
        np.testing.assert_allclose(out, loop, rtol=1e-13)


def test_averaging_over_batches_is_the_mean_of_the_losses():
    with jax.enable_x64(True):
        a, x0, d1, _, metric_fn = quadratic_problem()
        batches = {"A": jnp.stack([jnp.asarray(a), 3.0 * jnp.asarray(a)])}
        grid_fn = surfaces.make_grid_fn(metric_fn, strategy="map")
        out = surfaces.evaluate_grid(
            grid_fn, as_point(x0), (as_point(d1),), np.array([[0.0], [0.5]]), batches, chunk=2
        )
        assert out[0, 0] == pytest.approx(x0 @ a @ x0, rel=1e-12)  # mean of 1/2 and 3/2 x^T A x


def test_resume_evaluates_only_the_missing_points(tmp_path):
    with jax.enable_x64(True):
        a, x0, d1, _, metric_fn = quadratic_problem()
        axes = [(-1.0, 1.0, 11)]
        coords = records.grid_coords(axes)
        batches = {"A": jnp.asarray(a)[None]}
        seen = []

        def counting_grid_fn(origin, directions, chunk_coords, batches):
            seen.extend(np.asarray(chunk_coords)[:, 0].tolist())
            return inner(origin, directions, chunk_coords, batches)

        inner = surfaces.make_grid_fn(metric_fn, strategy="map")
        path = tmp_path / "v" / "surfaces" / "line.jsonl"
        header = {"kind": "surface", "settings": {"seed": 0}, "axes": axes}

        def run(**kw):
            return surfaces.evaluate_resumable(
                counting_grid_fn,
                as_point(x0),
                (as_point(d1),),
                coords,
                batches,
                path=path,
                header=header,
                chunk=3,
                fields=("loss", "sum"),
                **kw,
            )

        assert run() == 11
        full = records.load_record(path)
        # Cut the record after its first two chunks, as a killed run would leave it.
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
        seen.clear()
        with pytest.warns(DamagedRecordWarning, match="cut off a torn last line"):
            assert run() == 5  # 6 points were kept: only 5 are evaluated again
        assert sorted(seen[:5]) == pytest.approx(sorted(coords[6:, 0]))
        resumed = records.load_record(path)
        assert resumed["done"] == 11
        np.testing.assert_array_equal(resumed["loss"], full["loss"])
        seen.clear()
        assert run() == 0 and not seen  # complete: nothing to do
        header["settings"] = {"seed": 1}
        with pytest.raises(records.SurfaceError, match=r"other settings.*seed 0 -> 1"):
            run()
        assert run(overwrite=True) == 11


def _fake_record(run_dir, variant, name, kind, axes, settings, values):
    from landscape.results import RecordWriter

    path = records.record_path(run_dir, variant, name)
    header = {"kind": kind, "settings": {**settings, "accuracy": False}, "axes": axes}
    records.open_record(path, header)
    flat = np.ravel(values)
    points = [p for p in range(flat.size) if np.isfinite(flat[p])]
    with RecordWriter(path) as writer:
        writer.write([{"points": points, "loss": flat[points].tolist()}])


def test_figures_share_one_colour_scale_and_mark_the_endpoints(tmp_path):
    from matplotlib.colors import LogNorm

    from landscape import plots

    (tmp_path / "config.json").write_text(json.dumps({"variants": ["standard", "batchnorm"]}))
    a = records.axis_values((-1, 1, 5))
    bowl = 0.5 + np.add.outer(a**2, a**2)
    for variant, scale in (("standard", 10.0), ("batchnorm", 1.0)):
        surface = scale * bowl
        surface[0, 0] = np.nan  # a point an interrupted run has not evaluated yet
        settings = {"step": 4, "direction": "random", "seed": 0, "mode": "train", "batches": 1}
        _fake_record(tmp_path, variant, "s2", "surface", [[-1, 1, 5]] * 2, settings, surface)
        _fake_record(tmp_path, variant, "s1", "surface", [[-1, 1, 5]], settings, scale * bowl[2])
        interp = {"from": 0, "to": 9, "mode": "eval", "batches": 1}
        t_values = scale * (1.0 + records.axis_values((-0.5, 1.5, 9)) ** 2)
        _fake_record(tmp_path, variant, "i", "interpolation", [[-0.5, 1.5, 9]], interp, t_values)
    figures = plots.surface_figures(tmp_path)
    assert set(figures) == {"surface_s2_contour", "surface_s2_3d", "surface_s1", "interpolation_i"}
    contour = figures["surface_s2_contour"]
    panels = [ax for ax in contour.axes if ax.get_label() != "<colorbar>"]
    norms = {(c.norm.vmin, c.norm.vmax) for ax in panels for c in ax.collections}
    assert len(panels) == 2 and len(norms) == 1  # one colour scale for both variants
    norm = panels[0].collections[0].norm
    assert isinstance(norm, LogNorm) and norm.vmin == pytest.approx(0.5)
    assert norm.vmax == pytest.approx(25.0)  # the standard bowl's rim, 10 x 2.5
    ax = figures["interpolation_i"].axes[0]
    ends = [line for line in ax.lines if line.get_marker() == "o"]
    assert [list(line.get_xdata()) for line in ends] == [[0.0, 1.0], [0.0, 1.0]]
    assert "eval mode" in figures["interpolation_i"]._suptitle.get_text()
    assert ax.get_yscale() == "log"
    paths = plots.plot_run(tmp_path, formats=("png",))
    assert {p.stem for p in paths} == set(figures)
