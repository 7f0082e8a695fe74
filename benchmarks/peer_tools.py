"""The tools users would pick instead of ours, called the way their documentation shows, on the
PyTorch twin of our network (``torch_reference.TorchVGG``, same weights, same batch).

``benchmarks/peers.py`` times these next to our estimates. Each peer is imported on its own, so
one that is missing or broken on the installed torch becomes a row saying so instead of stopping
the benchmark. Needs the ``peers`` extra (torch and the three tools); ``landscape`` never imports
this file.

* hessian-eigenthings: ``HessianOperator`` (one forward, one backward with a graph and one
  double backward per Hessian-vector product), its ``lanczos`` and ``power_iteration_one``,
  ``hutchinson``.
* PyHessian: ``hessian(model, criterion, data=...)`` builds the gradient graph once and reuses it
  for every product (no forward per product); ``eigenvalues`` (power iteration), ``trace``
  (Hutchinson with a relative-change stopping rule), ``density``. It switches the model to eval
  mode itself; ``KeepTrainMode`` is the wrapper that holds BatchNorm in train mode instead.
* loss-landscapes: ``random_plane`` with ``normalization="filter"``.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_reference import TorchVGG, load_flax_params, nhwc_to_nchw

PEERS = {
    "hessian-eigenthings": "hessian_eigenthings",
    "pyhessian": "pyhessian",
    "loss-landscapes": "loss_landscapes",
}


def first_line(err: BaseException) -> str:
    """Returns ``Type: first line of the message``, the one line a failed row records."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def load_peers() -> tuple[dict[str, Any], dict[str, str]]:
    """Imports each peer; returns ``(modules, versions)``. A peer that does not import is absent
    from ``modules`` and its version is ``"not usable: <why>"``."""
    modules, versions = {}, {"torch": torch.__version__}
    for name, module in PEERS.items():
        try:
            modules[name] = importlib.import_module(module)
            versions[name] = importlib.metadata.version(name)
        except Exception as err:  # any import-time failure on this torch is the finding
            versions[name] = f"not usable: {first_line(err)}"
    return modules, versions


class KeepTrainMode(nn.Module):
    """Wraps a model so that ``.eval()`` leaves it in train mode.

    PyHessian calls ``model.eval()`` in its constructor, so its Hessian is that of the inference
    loss (BatchNorm with running averages), not the one the optimiser descends. Wrapped, its
    estimates are of the training loss, comparable with ours in train mode.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def train(self, mode: bool = True) -> KeepTrainMode:
        self.training = True
        self.inner.train(True)
        return self


class TorchTwin:
    """The network, weights and batch of one comparison, in PyTorch.

    ``mode`` is "train" (BatchNorm with the batch's statistics) or "eval" (running averages).
    Every tool gets its own copy of the model, so running statistics that one tool updates in
    train mode do not reach another.
    """

    def __init__(self, arch: str, width: float, norm: str, params, batch_stats, batch, mode: str):
        self.mode = mode
        self.base = TorchVGG(arch, width, norm)
        load_flax_params(self.base, params, batch_stats)
        self.base.train(mode == "train")
        self.images = nhwc_to_nchw(batch["image"])
        self.labels = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64))

    def model(self) -> nn.Module:
        """Returns a fresh copy of the model in this comparison's mode."""
        return copy.deepcopy(self.base).train(self.mode == "train")

    def loss(self, model: nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(self.images), self.labels)


# --- the tasks, one function per tool and method: each returns a dict with "value" ----------------


def gradient_fn(twin: TorchTwin) -> Callable[[], dict]:
    """One gradient evaluation: forward and backward (the unit costs are counted in)."""
    model = twin.model()
    params = [p for p in model.parameters() if p.requires_grad]

    def run() -> dict:
        grads = torch.autograd.grad(twin.loss(model), params)
        return {"value": float(torch.sqrt(sum((g * g).sum() for g in grads)))}

    return run


def eigenthings_operator(he, twin: TorchTwin, model: nn.Module | None = None):
    """Returns hessian-eigenthings' operator over one batch, as its README builds it."""
    model = model if model is not None else twin.model()
    return he.HessianOperator(
        model,
        [(twin.images, twin.labels)],
        he.supervised_loss(F.cross_entropy),
        full_dataset=True,
    )


def eigenthings_hvp_fn(he, twin: TorchTwin) -> Callable[[], dict]:
    op = eigenthings_operator(he, twin)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0))

    def run() -> dict:
        return {"value": float(op.matvec(v).norm())}

    return run


def eigenthings_lanczos_fn(he, twin: TorchTwin, iters: int, seed: int) -> Callable[[], dict]:
    op = eigenthings_operator(he, twin)

    def run() -> dict:
        result = he.lanczos(op, k=1, max_iter=iters, seed=seed)
        return {"value": float(result.eigenvalues[0])}

    return run


def eigenthings_power_fn(he, twin: TorchTwin, iters: int, seed: int) -> Callable[[], dict]:
    op = eigenthings_operator(he, twin)

    def run() -> dict:
        # tol=0: exactly ``iters`` products, the count found to reach the stated accuracy.
        value, _, _, done, _ = he.power_iteration_one(op, max_iter=iters, tol=0.0, seed=seed)
        return {"value": float(value), "iterations": done}

    return run


def eigenthings_trace_fn(he, twin: TorchTwin, probes: int, seed: int) -> Callable[[], dict]:
    op = eigenthings_operator(he, twin)

    def run() -> dict:
        result = he.hutchinson(op, num_samples=probes, seed=seed)
        return {"value": result.estimate, "stderr": result.stderr}

    return run


def eigenthings_lanczos_sequence(he, twin: TorchTwin, iters: int, seed: int) -> np.ndarray:
    """Returns the largest Ritz value after 1..iters Lanczos iterations of the run that
    ``lanczos(op, k=1, max_iter=m, seed=seed)`` makes (its start vector, its full
    reorthogonalisation), from one run of ``iters`` iterations."""
    op = eigenthings_operator(he, twin)
    v0 = torch.randn(op.size, dtype=op.dtype, generator=torch.Generator().manual_seed(seed))
    td = he.lanczos_tridiagonal(op, v0, iters, reorthogonalize=True)
    return ritz_sequence(td.alphas.double().numpy(), td.betas.double().numpy())


def eigenthings_power_sequence(he, twin: TorchTwin, iters: int, seed: int) -> np.ndarray:
    """Returns power_iteration_one's eigenvalue estimate after 1..iters products, by the same
    arithmetic from the same start vector."""
    op = eigenthings_operator(he, twin)
    v = torch.randn(op.size, dtype=op.dtype, generator=torch.Generator().manual_seed(seed))
    v = v / v.norm()
    values = []
    for _ in range(iters):
        av = op.matvec(v)
        values.append(float(torch.dot(v, av)))
        v = av / av.norm()
    return np.asarray(values)


def pyhessian_model(twin: TorchTwin, keep_train: bool) -> nn.Module:
    model = twin.model()
    return KeepTrainMode(model) if keep_train else model


def pyhessian_lambda_fn(ph, twin: TorchTwin, iters: int, seed: int, keep_train: bool):
    """PyHessian's power iteration, built as a user does for each checkpoint (the constructor's
    forward and backward included), for exactly ``iters`` products (tol=0)."""
    model = pyhessian_model(twin, keep_train)

    def run() -> dict:
        h = ph.hessian(model, F.cross_entropy, data=(twin.images, twin.labels), cuda=False)
        torch.manual_seed(seed)
        values, _ = h.eigenvalues(maxIter=iters, tol=0.0, top_n=1)
        return {"value": float(values[0])}

    return run


def pyhessian_power_sequence(ph, twin: TorchTwin, iters: int, seed: int, keep_train: bool):
    """Returns PyHessian's eigenvalue estimate after 1..iters products, by its own arithmetic
    (its utilities, its start vector for this seed)."""
    from pyhessian.utils import group_product, hessian_vector_product, normalization

    model = pyhessian_model(twin, keep_train)
    h = ph.hessian(model, F.cross_entropy, data=(twin.images, twin.labels), cuda=False)
    torch.manual_seed(seed)
    v = normalization([torch.randn(p.size()) for p in h.params])
    values = []
    for _ in range(iters):
        hv = hessian_vector_product(h.gradsH, h.params, v)
        values.append(float(group_product(hv, v)))
        v = normalization(hv)
    return np.asarray(values)


def pyhessian_hvp_fn(ph, twin: TorchTwin, keep_train: bool) -> Callable[[], dict]:
    """One product on PyHessian's stored graph (no forward: the constructor did it)."""
    from pyhessian.utils import hessian_vector_product

    model = pyhessian_model(twin, keep_train)
    h = ph.hessian(model, F.cross_entropy, data=(twin.images, twin.labels), cuda=False)
    gen = torch.Generator().manual_seed(0)
    v = [torch.randn(p.size(), generator=gen) for p in h.params]

    def run() -> dict:
        hv = hessian_vector_product(h.gradsH, h.params, v)
        return {"value": float(torch.sqrt(sum((x * x).sum() for x in hv)))}

    return run


def pyhessian_trace_fn(ph, twin: TorchTwin, probes: int, seed: int, keep_train: bool):
    """PyHessian's Hutchinson trace with exactly ``probes`` probes: tol=-inf turns its stopping
    rule off (see ``pyhessian_default_trace`` for what the rule does)."""
    model = pyhessian_model(twin, keep_train)

    def run() -> dict:
        h = ph.hessian(model, F.cross_entropy, data=(twin.images, twin.labels), cuda=False)
        torch.manual_seed(seed)
        samples = np.asarray(h.trace(maxIter=probes, tol=-math.inf))
        return _mean_and_stderr(samples)

    return run


def _mean_and_stderr(samples: np.ndarray) -> dict:
    stderr = float(samples.std(ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else math.nan
    return {"value": float(samples.mean()), "stderr": stderr, "probes": len(samples)}


def loss_landscapes_fn(ll, twin: TorchTwin, steps: int) -> Callable[[], dict]:
    """loss-landscapes' ``random_plane``: a ``steps`` x ``steps`` filter-normalised plane of the
    loss on the batch, on a copy of the model (``deepcopy_model=True``)."""
    from loss_landscapes.metrics import Loss

    model = twin.model()
    metric = Loss(F.cross_entropy, twin.images, twin.labels)

    def run() -> dict:
        torch.manual_seed(0)
        grid = np.asarray(
            ll.random_plane(
                model, metric, distance=1, steps=steps, normalization="filter", deepcopy_model=True
            ),
            np.float64,
        )
        return _surface_summary(grid)

    return run


def _surface_summary(grid: np.ndarray) -> dict:
    finite = grid[np.isfinite(grid)]
    middle = grid.shape[0] // 2
    return {
        "value": float(grid[middle, middle]),
        "min": float(finite.min()) if finite.size else math.nan,
        "max": float(finite.max()) if finite.size else math.nan,
        "non_finite": int(grid.size - finite.size),
    }


def ritz_sequence(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Returns the largest eigenvalue of the leading m x m block of the Lanczos matrix for
    m = 1..len(alphas): what m iterations of the same run give (float64)."""
    out = []
    for m in range(1, len(alphas) + 1):
        t = np.diag(alphas[:m]) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
        out.append(np.linalg.eigvalsh(t)[-1])
    return np.asarray(out)


# --- the pitfalls: each peer's default call, and what it does to the model ----------------------


def eigenthings_defaults(he, twin: TorchTwin, seed: int) -> dict:
    """``lanczos(op, k=1)`` as the README calls it (its default iteration count), and how far one
    call moves BatchNorm's running averages in train mode. Returns the value, the iterations it
    ran, and the largest change of a running mean."""
    model = twin.model()
    before = [b.detach().clone() for name, b in model.named_buffers() if "running_mean" in name]
    op = eigenthings_operator(he, twin, model)
    result = he.lanczos(op, k=1, seed=seed)
    after = [b.detach() for name, b in model.named_buffers() if "running_mean" in name]
    drift = max(
        (float((a - b).abs().max()) for a, b in zip(after, before, strict=True)), default=0.0
    )
    return {
        "value": float(result.eigenvalues[0]),
        "iterations": int(result.iterations),
        "running_mean_change": drift,
    }


def pyhessian_defaults(ph, twin: TorchTwin, seed: int, keep_train: bool) -> dict:
    """PyHessian as its README calls it: ``eigenvalues()`` and ``trace()`` with their defaults
    (tol 1e-3, at most 100 iterations), and ``density()``. Returns their values, the number of
    trace probes its stopping rule kept, and density's error if it fails."""
    model = pyhessian_model(twin, keep_train)
    h = ph.hessian(model, F.cross_entropy, data=(twin.images, twin.labels), cuda=False)
    torch.manual_seed(seed)
    values, _ = h.eigenvalues()
    torch.manual_seed(seed)
    samples = np.asarray(h.trace())
    out = {
        "value": float(values[0]),
        "trace": _mean_and_stderr(samples),
        "mode_after_constructor": "train" if model.training else "eval",
    }
    try:
        h.density(iter=3, n_v=1)
        out["density"] = "ran"
    except Exception as err:  # the finding: which call fails on this torch
        out["density"] = f"fails: {first_line(err)}"
    return out


def loss_landscapes_defaults(ll, twin: TorchTwin, steps: int) -> dict:
    """``random_plane`` as documented, on the model itself (``deepcopy_model=False``, its
    default): returns its summary, and the largest change it made to a weight and to a running
    mean of the user's model."""
    from loss_landscapes.metrics import Loss

    model = twin.model()
    weights = [p.detach().clone() for p in model.parameters()]
    means = [b.detach().clone() for name, b in model.named_buffers() if "running_mean" in name]
    torch.manual_seed(0)
    grid = np.asarray(
        ll.random_plane(model, Loss(F.cross_entropy, twin.images, twin.labels), steps=steps),
        np.float64,
    )
    moved = max(
        float((p.detach() - w).abs().max())
        for p, w in zip(model.parameters(), weights, strict=True)
    )
    new_means = [b for name, b in model.named_buffers() if "running_mean" in name]
    drift = max(
        (float((a - b).abs().max()) for a, b in zip(new_means, means, strict=True)), default=0.0
    )
    return {**_surface_summary(grid), "weight_change": moved, "running_mean_change": drift}
