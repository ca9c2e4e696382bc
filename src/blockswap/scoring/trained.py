"""Proxies after training steps (paper Table 1, "after k minibatches"): `RecipeSteps` runs the first SGD
steps of the recipe on seeded batches, and `TrainedScorer` ("trained") measures a proxy after them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import probe_images
from ..data.cifar import ImageSet, augment
from ..space.networks import BlockNetwork
from ..util.errors import BlockSwapError
from .scorer import Score, make_scorer, register_scorer

__all__ = ["TrainedScorer", "RecipeSteps"]


@lru_cache(maxsize=2)
def _training_images(data_dir: str | None) -> ImageSet:
    images = probe_images(data_dir, 32)
    if not isinstance(images, ImageSet):
        raise BlockSwapError(f"the recipe's SGD steps of the trained proxies read CIFAR-10; {data_dir} is an image "
                             "folder: use a proxy without steps there")
    return images


@dataclass(frozen=True)
class RecipeSteps:
    """The first SGD steps of the training recipe, on seeded augmented batches the same for every network."""

    data_dir: str | None = None
    seed: int = 0
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def batches(self, steps: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """`steps` augmented batches: consecutive slices of seeded permutations of the training images."""
        images = _training_images(self.data_dir)
        if self.batch_size > len(images):
            raise BlockSwapError(f"batch size {self.batch_size} exceeds the {len(images)} training images")
        per_epoch = len(images) // self.batch_size
        g = torch.Generator().manual_seed(self.seed)
        order = torch.empty(0, dtype=torch.long)
        for step in range(steps):
            if step % per_epoch == 0:
                order = torch.randperm(len(images), generator=g)
            idx = order[(step % per_epoch) * self.batch_size:][: self.batch_size]
            yield augment(images.images[idx], g).to(device), images.labels[idx].to(device)

    def run(self, model: nn.Module, checkpoints: Iterable[int],
            device: torch.device) -> Iterator[tuple[int, nn.Module]]:
        """Train a copy of `model`, yielding (k, the copy) after k steps for each k of `checkpoints`."""
        wanted = list(checkpoints)
        if not wanted or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in wanted):
            raise BlockSwapError(f"training steps must be positive whole numbers, got {wanted}")
        wanted = sorted(set(wanted))
        net = copy.deepcopy(model).train()
        for p in net.parameters():
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay)
        for step, (x, y) in enumerate(self.batches(wanted[-1], device), start=1):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
            if step in wanted:
                net.zero_grad(set_to_none=True)
                yield step, net


class TrainedScorer:
    """`proxy` (a registered scorer name) measured on the probe batch after `steps` SGD steps of the recipe."""

    def __init__(self, proxy: str = "fisher", steps: int = 10, data_dir: str | None = None, seed: int = 0,
                 batch_size: int = 128, lr: float = 0.1) -> None:
        if proxy == "trained":
            raise BlockSwapError("the trained scorer measures another proxy, not itself")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise BlockSwapError(f"steps must be a positive whole number, got {steps!r}")
        self.proxy, self.steps = proxy, steps
        self.inner = make_scorer(proxy)
        self.log_average = getattr(self.inner, "log_average", True)
        self.recipe = RecipeSteps(data_dir, seed, batch_size, lr)

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        for _, trained in self.recipe.run(model, [self.steps], batch[0].device):
            return self.inner(trained, batch)  # type: ignore[arg-type]
        raise AssertionError("unreachable: run yields once per checkpoint")


register_scorer("trained")(TrainedScorer)
