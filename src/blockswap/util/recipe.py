"""The training recipe: the SGD settings a training run, a ranking study and the proxies' training steps share.

`Recipe` declares each setting once, with its option help and check; the
configs that run the recipe (`TrainConfig`, `StudyConfig`, `RecipeSteps`) extend
it, so their constructors, attributes, command-line options and saved JSON stay
flat (`--epochs`, `config.epochs`, "epochs": 200) while the fields are one.
The defaults are the paper's CIFAR-10 recipe (SPEC section 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .options import below_one, non_negative, non_negative_int, option, positive, positive_int

__all__ = ["SCHEDULES", "PER_STEP_SCHEDULES", "Recipe"]

SCHEDULES = ("cosine", "cosine-steps", "step", "step-30")
PER_STEP_SCHEDULES = ("cosine-steps",)  # stepped after every SGD step, not every epoch


@dataclass(kw_only=True)
class Recipe:
    """SGD with momentum on augmented batches: how long, how large, how fast, and the learning-rate schedule."""

    epochs: int = field(default=200, metadata=option(
        "training epochs (the recipe's: 200 cifar, 100 imagenet)", check=positive_int))
    batch_size: int = field(default=128, metadata=option(
        "global minibatch, split across processes (the recipe's: 128 cifar, 256 imagenet)", check=positive_int))
    lr: float = field(default=0.1, metadata=option("initial learning rate, the paper's", check=positive))
    momentum: float = field(default=0.9, metadata=option(
        "SGD momentum (plain, not Nesterov), the paper's", check=below_one))
    weight_decay: float = field(default=5e-4, metadata=option(
        "weight decay on every parameter (the recipe's: 5e-4 cifar, as the published code; 1e-4 imagenet)",
        check=non_negative))
    schedule: str = field(default="cosine", metadata=option(
        "cosine: the published code's annealing, per epoch; cosine-steps: the same curve per SGD step, so a "
        "run of a few epochs ends at lr 0 (per epoch, a 2-epoch run trains its last epoch at lr/2); step: the "
        "paper's lr/5 at 30%, 60%, 80% of the epochs; step-30: lr/10 every 30 epochs (the ImageNet recipe)",
        choices=SCHEDULES))
    cutout: int = field(default=16, metadata=option(
        "Cutout hole size, 0 disables it (the recipe's: 16 cifar, the published code's; 0 imagenet)",
        check=non_negative_int))

    def recipe_settings(self) -> dict[str, Any]:
        """This config's recipe fields as keyword arguments, to hand the same recipe to another config."""
        return {f.name: getattr(self, f.name) for f in fields(Recipe)}

    def recipe(self) -> Recipe:
        """This config's recipe alone."""
        return Recipe(**self.recipe_settings())
