"""The eager PyTorch reference: the same VGG and the same landscape probe, as a PyTorch user writes them.

This is what ``benchmarks/compare_torch.py`` measures our JAX code against, on identical weights
and batches. It is written the way the probe is usually written in PyTorch (in-place weight
moves, one forward and backward per step size, state restored afterwards), not tuned. Torch is
an optional extra (``pip install landscape[bench]``); nothing in ``landscape`` imports this file.

Definitions follow SPEC, "The landscape probe" (Santurkar et al. 2018, Fig. 4, App. A.2.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landscape.models import VGG_CONFIGS, scaled_width


class TorchVGG(nn.Module):
    """VGG at CIFAR size, layer for layer the same as ``landscape.models.VGG``.

    conv 3x3 (padding 1) -> [BatchNorm] -> ReLU for every width of ``VGG_CONFIGS[depth]``, 2x2
    max-pools at the "M"s, flatten, one ``Linear``. ``norm`` is "none" or "batchnorm"; BatchNorm
    comes before the ReLU as in the paper, with Flax's constants in torch's convention (eps 1e-5,
    momentum 0.1 == Flax's 0.9). Glorot-uniform weights and zero biases, as in SPEC.
    """

    def __init__(
        self, depth: str = "vgg11", width: float = 1.0, norm: str = "none", num_classes: int = 10
    ):
        super().__init__()
        if norm not in ("none", "batchnorm"):
            raise ValueError(f"the torch reference has no normalisation {norm!r}")
        self.norm = norm
        layers: list[nn.Module] = []
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = 3
        for v in VGG_CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = scaled_width(int(v), width)
            conv = nn.Conv2d(channels, out, 3, padding=1)
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            self.convs.append(conv)
            layers.append(conv)
            if norm == "batchnorm":
                bn = nn.BatchNorm2d(out, eps=1e-5, momentum=0.1)
                self.norms.append(bn)
                layers.append(bn)
            layers.append(nn.ReLU())
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def load_flax_params(model: TorchVGG, params: Any, batch_stats: Any = None) -> TorchVGG:
    """Copies Flax ``params`` (and BatchNorm ``batch_stats``) of ``landscape.models.VGG`` into
    ``model``, in place, and returns it.

    Conv kernels go from HWIO to OIHW, the Dense kernel (in, out) to the Linear weight (out, in);
    BatchNorm ``scale``/``bias``/``mean``/``var`` become ``weight``/``bias``/``running_mean``/
    ``running_var``.
    """

    def tensor(a) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32))

    with torch.no_grad():
        for i, conv in enumerate(model.convs):
            p = params[f"Conv3x3_{i}"]
            conv.weight.copy_(tensor(p["kernel"]).permute(3, 2, 0, 1))
            conv.bias.copy_(tensor(p["bias"]))
        for i, bn in enumerate(model.norms):
            p = params[f"BatchNorm_{i}"]
            bn.weight.copy_(tensor(p["scale"]))
            bn.bias.copy_(tensor(p["bias"]))
            if batch_stats:
                bn.running_mean.copy_(tensor(batch_stats[f"BatchNorm_{i}"]["mean"]))
                bn.running_var.copy_(tensor(batch_stats[f"BatchNorm_{i}"]["var"]))
        kernel = tensor(params["Dense_0"]["kernel"])
        # Flax flattens an NHWC map, torch an NCHW one: the orders agree only for a 1x1 map,
        # which is what five 2x2 pools leave of a 32x32 CIFAR image.
        if kernel.shape[0] != model.classifier.in_features:
            raise ValueError(
                f"the classifier sees {kernel.shape[0]} features, not one per channel "
                f"({model.classifier.in_features}): the final map is not 1x1, so NHWC and NCHW "
                "flatten orders differ"
            )
        model.classifier.weight.copy_(kernel.T)
        model.classifier.bias.copy_(tensor(params["Dense_0"]["bias"]))
    return model


def nhwc_to_nchw(images) -> torch.Tensor:
    """Returns NHWC images (numpy or JAX) as a contiguous NCHW float32 torch tensor."""
    return torch.from_numpy(
        np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))
    )


def torch_probe(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    etas: Sequence[float] | np.ndarray,
    *,
    grads: Sequence[torch.Tensor] | None = None,
    loss0: torch.Tensor | float | None = None,
) -> dict[str, np.ndarray]:
    """Probes the loss landscape along the gradient at the model's weights x on one batch.

    With g = grad L(x) (mean cross-entropy, BatchNorm in train mode: batch statistics), for every
    eta it moves the weights to x - eta g, runs forward and backward on the same batch and records
    L(x - eta g) and ||grad L(x - eta g) - g||. ``grads``/``loss0`` may be passed when the training
    step already computed them (as our JAX ``probe_step`` reuses the training gradient). The
    weights and the BatchNorm running statistics are restored afterwards: the probe changes
    nothing. Returns numpy arrays ``loss``, ``grad_dist``, ``step_norm`` (eta ||g||), and scalars
    ``loss0``, ``grad_norm``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    model.train()

    def loss_and_grads() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loss = F.cross_entropy(model(images), labels)
        return loss.detach(), torch.autograd.grad(loss, params)

    origin = [p.detach().clone() for p in params]
    try:
        if grads is None:
            loss0, grads = loss_and_grads()
        elif loss0 is None:
            with torch.no_grad():
                loss0 = F.cross_entropy(model(images), labels)
        grads = [g.detach() for g in grads]
        grad_norm = torch.sqrt(sum(torch.sum(g * g) for g in grads))
        losses, dists = [], []
        for eta in etas:
            with torch.no_grad():
                for p, x, g in zip(params, origin, grads, strict=True):
                    torch.add(x, g, alpha=-float(eta), out=p)
            loss, moved = loss_and_grads()
            dist = torch.sqrt(
                sum(torch.sum((m - g) ** 2) for m, g in zip(moved, grads, strict=True))
            )
            losses.append(loss)
            dists.append(dist)
    finally:
        with torch.no_grad():
            for p, x in zip(params, origin, strict=True):
                p.copy_(x)
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
        model.train(was_training)
    etas = np.asarray(etas, np.float32)
    grad_norm_value = float(grad_norm)
    return {
        "loss": torch.stack(losses).cpu().numpy(),
        "grad_dist": torch.stack(dists).cpu().numpy(),
        "step_norm": np.abs(etas) * np.float32(grad_norm_value),
        "loss0": np.float32(float(loss0)),
        "grad_norm": np.float32(grad_norm_value),
    }


def torch_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One SGD step in train mode; returns the loss and the gradient at the weights before it."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    optimizer.step()
    return loss.detach(), grads
