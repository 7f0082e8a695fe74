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


def test_pca_reads_the_rows_as_a_stream_twice_and_never_holds_them_all():
    n, p, block = 200, 20_000, 8
    calls, alive, peak_alive = [], set(), [0]

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

    tracemalloc.start()
    try:
        pca = path_pca(rows, dtype=np.float64, block=block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(calls) == 2 and pca.count == n
    assert peak_alive[0] <= block + 1
    all_rows = n * p * 8
    # The sketch, its basis and a block: about p x (2 x 12 + 2 x 8) floats, a fifth of the rows;
    # holding every row would need all of them and more.
    assert peak < all_rows / 3, f"peak {peak / 1e6:.1f} MB for {all_rows / 1e6:.1f} MB of rows"
    assert pca.explained_variance_ratio[0] > 0.9  # the path is mostly a straight line


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
