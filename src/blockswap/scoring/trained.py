"""Proxies after training steps (paper Table 1, "after k minibatches"): `RecipeSteps` runs the first SGD
steps of the recipe on seeded batches, and `TrainedScorer` ("trained") measures a proxy after them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import probe_images
from ..data.cifar import ImageSet, augment
from ..space.networks import BlockNetwork
from ..util.errors import BlockSwapError
from ..util.options import check_fields, option, positive_int, seed_int
from ..util.recipe import Recipe
from .scorer import Score, ScorerInfo, make_scorer, register_scorer, scorer_info

__all__ = ["TrainedScorer", "RecipeSteps"]


@lru_cache(maxsize=2)
def _training_images(data_dir: str | None) -> ImageSet:
    images = probe_images(data_dir, 32)
    if not isinstance(images, ImageSet):
        raise BlockSwapError(f"the recipe's SGD steps of the trained proxies read CIFAR-10; {data_dir} is an image "
                             "folder: use a proxy without steps there")
    return images


@dataclass
class RecipeSteps(Recipe):
    """The first SGD steps of `Recipe` (its batch size, lr, momentum, weight decay and Cutout; keyword-only), on
    seeded augmented batches of `data_dir`'s training images, the same for every network."""

    data_dir: str | None = field(default=None, metadata=option(
        "CIFAR-10 folder; None: the embedded 1,000-image sample"))
    seed: int = field(default=0, metadata=option("fixes the batches and their augmentation", check=seed_int))

    def __post_init__(self) -> None:
        """Refuse a recipe the steps cannot run, naming the first bad setting."""
        check_fields(self)

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
            yield augment(images.images[idx], g, cutout=self.cutout).to(device), images.labels[idx].to(device)

    def run(self, model: nn.Module, checkpoints: Iterable[int],
            device: torch.device) -> Iterator[tuple[int, nn.Module]]:
        """Train a copy of `model`, yielding (k, the copy) after k steps for each k of `checkpoints`."""
        wanted = list(checkpoints)
        if not wanted or not all(positive_int.ok(k) for k in wanted):
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
    """`proxy` (a registered scorer name) measured on the probe batch after `steps` SGD steps of the recipe.

    Several initialisations average as the proxy's do (its `scorer_info`); the steps read training data."""

    def __init__(self, proxy: str = "fisher", steps: int = 10, data_dir: str | None = None, seed: int = 0,
                 batch_size: int = 128, lr: float = 0.1) -> None:
        if proxy == "trained":
            raise BlockSwapError("the trained scorer measures another proxy, not itself")
        positive_int("steps", steps)
        self.proxy, self.steps = proxy, steps
        self.inner = make_scorer(proxy)
        self.recipe = RecipeSteps(data_dir=data_dir, seed=seed, batch_size=batch_size, lr=lr)

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        for _, trained in self.recipe.run(model, [self.steps], batch[0].device):
            return self.inner(trained, batch)  # type: ignore[arg-type]
        raise AssertionError("unreachable: run yields once per checkpoint")


register_scorer("trained", info_of=lambda scorer: ScorerInfo(scorer_info(scorer.proxy).log_average))(TrainedScorer)
