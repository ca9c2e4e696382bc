"""The paper's baselines as students: scaled networks, one block type everywhere, random genotypes, pruning.

Each returns the genotype a baseline trains (pruning trains the teacher's own
network, masked by `TrainConfig.prune`), so the same comparisons run from
Python as from `blockswap train student`:

    scaled("wrn-16-2")                      a depth/width-scaled all-Conv network
    single_type(backbone, "G4B2")           every block the same palette type
    random_student(backbone, 400_000, 1)    a random genotype within the budget window
    student_genotype(...)                   which of these the CLI's options name
"""

from __future__ import annotations

from ..space.backbones import Backbone, get_backbone
from ..space.genotype import Genotype
from ..space.sampling import DEFAULT_TOLERANCE, sample_genotypes
from ..util.errors import BlockSwapError
from .pruning import PRUNE_METHODS

__all__ = ["scaled", "single_type", "random_student", "student_genotype"]


def scaled(model: str, num_classes: int | None = None) -> Genotype:
    """The all-`Conv` network of a registered backbone (e.g. a shallower or thinner WRN)."""
    return Genotype.uniform(get_backbone(model, num_classes))


def single_type(backbone: Backbone, block: str) -> Genotype:
    """Every block of `backbone` the registered type `block`."""
    return Genotype.uniform(backbone, block).validate()


def random_student(backbone: Backbone, budget: int, seed: int, tolerance: float = DEFAULT_TOLERANCE) -> Genotype:
    """One genotype drawn uniformly from those within `tolerance` of the parameter budget."""
    return sample_genotypes(backbone, budget, 1, tolerance=tolerance, seed=seed)[0]


def student_genotype(
    teacher: Genotype | None,
    model: str | None = None,
    all_type: str | None = None,
    random: bool = False,
    prune: str | None = None,
    budget: int | None = None,
    seed: int = 0,
    num_classes: int | None = None,
) -> Genotype:
    """The student a baseline trains: `all_type` or `random` on `model`'s backbone (else the teacher's),
    `model` alone scaled, or the teacher itself for `prune` (which `budget` then bounds).

    A `model` gets `num_classes` classes, else the teacher's, else its own.
    """
    if sum(map(bool, (all_type, random, prune))) > 1:
        raise BlockSwapError("choose one baseline: all_type, random or prune")
    if prune is not None and prune not in PRUNE_METHODS:
        raise BlockSwapError(f"unknown pruning method {prune!r}; valid choices: {', '.join(PRUNE_METHODS)}")
    if budget is not None and not (random or prune):
        raise BlockSwapError("budget applies to random and prune only")
    if (random or prune) and budget is None:
        raise BlockSwapError(f"{'random' if random else 'prune'} needs a budget")
    if prune:
        if model:
            raise BlockSwapError("prune prunes the teacher's own network; a model does not apply")
        if teacher is None:
            raise BlockSwapError("prune prunes the teacher: give its genotype")
        return teacher
    if num_classes is None and teacher is not None:
        num_classes = teacher.backbone.num_classes
    if model and not (all_type or random):
        return scaled(model, num_classes)
    if model is None and teacher is None:
        raise BlockSwapError("name the student: a model, or a teacher to derive it from")
    backbone = get_backbone(model, num_classes) if model else teacher.backbone  # type: ignore[union-attr]
    if all_type:
        return single_type(backbone, all_type)
    if random:
        return random_student(backbone, budget, seed)  # type: ignore[arg-type]
    raise BlockSwapError("name the student: a model, all_type, random or prune")
