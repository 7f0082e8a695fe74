"""The optimisation path on its principal directions (Li, Xu, Taylor, Studer, Goldstein,
"Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018, Sec. 7).

Random directions in millions of dimensions are nearly orthogonal to the path an optimiser
takes, so the path shows up on a random slice as a dot. Li et al. take the iterates instead:
the rows ``v_t = x_t - x_final`` (t over the saved checkpoints), their principal components,
and the loss on the plane through ``x_final`` spanned by the first two. The path projected on
that plane ends at the origin, and the share of the path's variance the two components explain
says how much of it the picture shows.

With 15,000 checkpoints of a network with millions of weights the matrix of rows does not fit
in memory. ``path_pca`` is a randomised SVD (Halko, Martinsson, Tropp, "Finding structure with
randomness", SIAM Review 2011, Algorithms 4.1 and 4.3) that reads the rows as a stream in two
passes (one more per power iteration) and holds O(p x (k + oversampling + block)) numbers for p
parameters, never O(p x n). docs/curvature.md
("Trajectories on PCA directions") gives the memory bound in bytes.

Everything here works on flat numpy vectors; ``Flattener`` turns a parameter pytree into one
and back, with the entries Li et al. ignore (biases and BatchNorm parameters) set to zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.surfaces import IGNORE_CHOICES, filter_normalize

Rows = Callable[[], Iterable[np.ndarray]]  # a fresh pass over the same rows at every call


@dataclasses.dataclass(frozen=True)
class PathPCA:
    """The principal directions of the rows ``v_t`` (``path_pca``); units of the parameters.

    ``components`` (k, p): orthonormal rows, largest variance first. ``singular_values`` (k,):
    of the centred rows. ``explained_variance`` (k,): variance along each component,
    ``s^2 / (n - 1)`` (scikit-learn's convention, which Li et al.'s code uses);
    ``explained_variance_ratio`` (k,): its share of ``total_variance``, the summed variance of
    the centred rows over all p coordinates (exact, not estimated). ``coordinates`` (n, k): each
    row, not centred, on the components: ``v_t . u_i``. ``count``: rows n; ``passes``: passes
    made over them.
    """

    components: np.ndarray
    singular_values: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    total_variance: float
    coordinates: np.ndarray
    count: int
    passes: int


# Parameters per slice of the (p, l) products: their temporaries stay this many rows, not p.
_SLICE = 1 << 18


def _slices(size: int) -> Iterator[slice]:
    for start in range(0, size, _SLICE):
        yield slice(start, min(start + _SLICE, size))


def _blocks(rows: Iterable[np.ndarray], block: int, dtype: np.dtype) -> Iterator[np.ndarray]:
    """Yields the rows ``block`` at a time as (b, p) arrays of ``dtype``.

    Every block is the same buffer, refilled: the caller is done with one block before it asks
    for the next, and a row can be freed by its producer as soon as it is copied in.
    """
    buffer: np.ndarray | None = None
    filled = 0
    for row in rows:
        row = np.asarray(row).reshape(-1)
        if buffer is None:
            buffer = np.empty((block, row.size), dtype)
        elif row.size != buffer.shape[1]:
            raise ValueError(f"rows differ in length: {row.size} after {buffer.shape[1]}")
        buffer[filled] = row
        filled += 1
        del row
        if filled == block:
            yield buffer
            filled = 0
    if buffer is not None and filled:
        yield buffer[:filled]


def _orthonormalize(y: np.ndarray) -> np.ndarray:
    """Returns an orthonormal basis of the rows of ``y`` (l, p), written over them: an (r, p)
    view of ``y`` (r <= l). Nothing of y's size is allocated.

    Twice: the Gram matrix ``Y Y^T`` in float64, its eigendecomposition ``V diag(lam) V^T``, and
    ``Y <- lam^(-1/2) V^T Y`` a slice of columns at a time (the second round restores the
    orthogonality the first loses to the squared condition number, as in Cholesky-QR2).
    Directions with less than 1e-12 of the largest eigenvalue (singular values below 1e-6 of
    the largest) carry nothing of the rows and are dropped.
    """
    r = y.shape[0]
    for _ in range(2):
        gram = np.zeros((r, r))
        for s in _slices(y.shape[1]):
            part = y[:r, s].astype(np.float64)
            gram += part @ part.T
        lam, vec = np.linalg.eigh(gram)
        lam, vec = lam[::-1], vec[:, ::-1]  # largest first
        if not lam.size or lam[0] <= 0:
            raise ValueError("the rows do not vary: the path has no direction")
        keep = lam > lam[0] * 1e-12
        m = (vec[:, keep] / np.sqrt(lam[keep])).T  # (new r, r)
        for s in _slices(y.shape[1]):
            y[: len(m), s] = m @ y[:r, s].astype(np.float64)
        r = len(m)
    return y[:r]


def _accumulate(y: np.ndarray, left: np.ndarray, vb: np.ndarray, work: np.ndarray) -> None:
    """``y += left @ vb`` for ``left`` (l, b) and a block ``vb`` (b, p), a slice of columns at
    a time through the preallocated ``work`` (l, slice): neither the (l, p) product nor a fresh
    temporary per slice is allocated."""
    left = left.astype(y.dtype)
    for s in _slices(vb.shape[1]):
        out = work[: len(left), : s.stop - s.start]
        np.matmul(left, vb[:, s], out=out)
        y[:, s] += out


def path_pca(
    rows: Rows,
    *,
    components: int = 2,
    oversampling: int = 10,
    power_iterations: int = 0,
    center: bool = True,
    seed: int = 0,
    block: int = 8,
    dtype: Any = np.float32,
) -> PathPCA:
    """Returns the top ``components`` principal directions of the rows that ``rows()`` yields.

    ``rows()`` is called ``2 + power_iterations`` times; every call must yield the same (p,)
    vectors in the same order (a ValueError says when the count differs). No pass keeps more
    than ``block`` rows. Memory: one (l, p) array of ``dtype`` for the sketch (l = ``components
    + oversampling``; two during a power iteration), one (block, p) buffer, the mean in float64
    and in ``dtype``, and temporaries of at most l x 2^18 numbers: independent of the number of
    rows n.

    With ``center`` the rows are centred by their mean first, as a PCA does (scikit-learn's, in
    Li et al.'s code): the directions then do not depend on the reference ``x_final`` the rows
    are taken from; ``coordinates`` still projects the rows themselves, so the final iterate
    (a zero row) sits at the origin. Without ``center`` it is the SVD of the rows as given.

    The method: pass 1 forms the sketch ``Y = Omega^T C`` (l x p) for a Gaussian Omega (n x l),
    one row of Omega drawn per row of the stream, and the mean of the rows; Omega^T C =
    Omega^T V - (sum of Omega's rows) mean^T, so centring costs nothing. Y is orthonormalised
    in place into Q (l x p). Each power iteration makes one pass, ``Y = (C Q^T)^T C``, which
    sharpens the subspace when the spectrum decays slowly. The last pass forms ``B = C Q^T``
    (n x l, small) and the exact total variance; the SVD of B gives the components ``W^T Q``.
    When l is at least the rank of C (in particular with at most l rows) the subspace is exact
    and so is the result, up to rounding in ``dtype``.
    """
    if components < 1 or oversampling < 0 or power_iterations < 0 or block < 1:
        raise ValueError("components and block must be positive, the others non-negative")
    dtype = np.dtype(dtype)
    width = components + oversampling
    rng = np.random.default_rng(seed)
    passes = 0

    # Pass 1: the sketch Y = Omega^T V and the mean.
    y: np.ndarray | None = None
    total: np.ndarray | None = None
    omega_sum = np.zeros(width)
    count = 0
    for vb in _blocks(rows(), block, dtype):
        omega = rng.standard_normal((len(vb), width))
        if y is None or total is None:
            y = np.zeros((width, vb.shape[1]), dtype)
            total = np.zeros(vb.shape[1])
            work = np.empty((width, min(_SLICE, vb.shape[1])), dtype)
        _accumulate(y, omega.T, vb, work)
        for s in _slices(vb.shape[1]):
            total[s] += vb[:, s].sum(axis=0, dtype=np.float64)
        omega_sum += omega.sum(axis=0)
        count += len(vb)
    passes += 1
    if y is None or total is None or count == 0:
        raise ValueError("no rows to analyse")
    mean = total / count if center else np.zeros_like(total)
    del total
    mean_d = mean.astype(dtype)
    _subtract_outer(y, omega_sum, mean)
    q = _orthonormalize(y)

    for _ in range(power_iterations):
        y_next = np.zeros(q.shape, dtype)
        z_sum = np.zeros(len(q))
        q_mean = q @ mean_d
        seen = 0
        for vb in _blocks(rows(), block, dtype):
            z = vb @ q.T - q_mean  # (b, r): the block's centred rows on Q
            _accumulate(y_next, z.T, vb, work)
            z_sum += z.sum(axis=0, dtype=np.float64)
            seen += len(vb)
        passes += 1
        _check_count(seen, count)
        del q, y
        _subtract_outer(y_next, z_sum, mean)
        y = y_next
        q = _orthonormalize(y)

    # Last pass: the rows on Q, and the exact sum of squares of the centred rows.
    parts: list[np.ndarray] = []
    squares = 0.0
    for vb in _blocks(rows(), block, dtype):
        parts.append((vb @ q.T).astype(np.float64))
        for s in _slices(vb.shape[1]):
            squares += float(np.sum(np.square(vb[:, s] - mean_d[s], dtype=np.float64)))
    passes += 1
    _check_count(sum(len(p) for p in parts), count)
    projected = np.concatenate(parts)

    centred = projected - (q @ mean_d).astype(np.float64)
    _, s, wt = np.linalg.svd(centred, full_matrices=False)
    k = min(components, wt.shape[0])
    coordinates = projected @ wt[:k].T
    comps = wt[:k].astype(q.dtype) @ q
    # A component's sign is arbitrary: choose the one that puts the first row (the start of
    # the path) on the positive side, so pictures of the same run agree.
    signs = np.where(coordinates[0] < 0, -1.0, 1.0)
    coordinates = coordinates * signs
    comps *= signs[:, None].astype(comps.dtype)
    s = s[:k]
    dof = max(count - 1, 1)
    return PathPCA(
        components=comps,
        singular_values=s,
        explained_variance=s**2 / dof,
        explained_variance_ratio=s**2 / squares if squares > 0 else np.zeros(k),
        total_variance=squares / dof,
        coordinates=coordinates,
        count=count,
        passes=passes,
    )


def _subtract_outer(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """``y -= u v^T`` in place, a slice of columns at a time."""
    if not np.any(u) or not np.any(v):
        return
    for s in _slices(y.shape[1]):
        y[:, s] -= np.outer(u[: len(y)], v[s]).astype(y.dtype)


def _check_count(seen: int, count: int) -> None:
    if seen != count:
        raise ValueError(
            f"the rows changed between passes: {seen} rows where the first pass saw {count}"
        )


def project(rows: Iterable[np.ndarray], directions: np.ndarray) -> np.ndarray:
    """Returns the (n, k) coordinates ``c_t`` minimising ``||v_t - c_t D||`` for each row.

    ``directions`` D (k, p) need not be orthogonal nor of unit norm (filter-normalised ones are
    neither): ``c_t = (D D^T)^{-1} D v_t``, the least-squares projection Li et al. offer
    ("lstsq"). A row in the span of D gets its exact coordinates; for orthonormal D this is
    ``D v_t``. One pass, one row at a time.
    """
    d = np.asarray(directions)
    gram = (d.astype(np.float64) @ d.T.astype(np.float64)).astype(np.float64)
    out = [np.linalg.solve(gram, (d @ np.asarray(v, d.dtype)).astype(np.float64)) for v in rows]
    return np.stack(out) if out else np.zeros((0, len(d)))


def path_axes(
    coordinates: np.ndarray, points: int, *, margin: float = 0.25
) -> list[tuple[float, float, int]]:
    """Returns a grid axis ``(lo, hi, points)`` per column of ``coordinates`` around the path.

    Each axis covers the path and the origin, widened by ``margin`` of its width on each side;
    an axis along which the path barely moves is still at least half as wide as the widest, so
    the picture shows the valley around the path and not a sliver.
    """
    coordinates = np.asarray(coordinates, dtype=np.float64)
    lo = np.minimum(coordinates.min(axis=0), 0.0)
    hi = np.maximum(coordinates.max(axis=0), 0.0)
    widest = float(np.max(hi - lo)) or 1.0
    axes = []
    for a, b in zip(lo, hi, strict=True):
        centre = (a + b) / 2
        half = max((b - a) / 2, widest / 4) * (1 + 2 * margin)
        axes.append((float(centre - half), float(centre + half), int(points)))
    return axes


class Flattener:
    """Turns a parameter pytree into one flat float vector and back.

    Leaves are concatenated in ``jax.tree.leaves`` order. With ``ignore="biases-and-bn"`` the
    entries of vectors (biases, BatchNorm's scale and offset) are set to zero, as Li et al. do
    for the path's PCA ("ignore biasbn"); with ``"none"`` every parameter counts.
    """

    def __init__(self, template: Any, *, ignore: str = "biases-and-bn"):
        if ignore not in IGNORE_CHOICES:
            raise ValueError(
                f"unknown ignore {ignore!r}; choose one of {', '.join(IGNORE_CHOICES)}"
            )
        self.ignore = ignore
        leaves, self.treedef = jax.tree.flatten(template)
        self.shapes = [tuple(np.shape(leaf)) for leaf in leaves]
        self.dtypes = [np.asarray(leaf).dtype for leaf in leaves]
        self.kept = [len(s) >= 2 or ignore == "none" for s in self.shapes]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.size = int(sum(self.sizes))

    def flatten(self, params: Any, dtype: Any = np.float32) -> np.ndarray:
        """Returns the (p,) vector of ``params`` in ``dtype``, ignored entries zero."""
        leaves = self.treedef.flatten_up_to(params)
        out = np.zeros(self.size, dtype)
        start = 0
        for leaf, size, kept in zip(leaves, self.sizes, self.kept, strict=True):
            if kept:
                out[start : start + size] = np.asarray(leaf).reshape(-1)
            start += size
        return out

    def unflatten(self, vector: np.ndarray) -> Any:
        """Returns the pytree whose leaves are the slices of ``vector`` (JAX arrays in the
        template's dtypes)."""
        vector = np.asarray(vector).reshape(-1)
        if vector.size != self.size:
            raise ValueError(f"a vector of {vector.size} entries for {self.size} parameters")
        leaves = []
        start = 0
        for shape, size, dtype in zip(self.shapes, self.sizes, self.dtypes, strict=True):
            leaves.append(jnp.asarray(vector[start : start + size].reshape(shape), dtype))
            start += size
        return jax.tree.unflatten(self.treedef, leaves)


def normalize_directions(components: np.ndarray, params: Any, flattener: Flattener) -> np.ndarray:
    """Returns the (k, p) components filter-normalised to ``params`` (Li et al. 2018, Sec. 4).

    Each filter of each direction gets the norm of the model's filter at that position
    (``surfaces.filter_normalize``), so that a = 1 moves every filter by its own norm. The
    rescaled directions leave the plane of the components: the path is then projected on them
    by least squares (``project``).
    """
    out = []
    for row in np.asarray(components):
        tree = filter_normalize(flattener.unflatten(row), params, ignore=flattener.ignore)
        out.append(flattener.flatten(tree, np.asarray(components).dtype))
    return np.stack(out)
