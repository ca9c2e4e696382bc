"""Attention transfer (Zagoruyko & Komodakis 2017) and Hinton knowledge distillation losses.

Follows SPEC section 5, i.e. the published BlockSwap code: the attention map of
an activation is the channel mean of its square, flattened over H*W and
L2-normalised; the loss at one point is the mean over all entries of the squared
difference of the two maps; the student loss is cross-entropy plus beta times
the sum over points, with beta scaled by 3 / points so that beta = 1000 means the
same for a 3-stage WRN and a 4-stage ResNet. Optional Hinton et al. (2015) KD
mixes (1 - alpha) * CE with alpha * T^2 * KL(teacher || student) at temperature T.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from ..util.errors import BlockSwapError
from ..util.options import option

__all__ = ["DistillConfig", "LossParts", "attention_map", "attention_loss", "kd_loss", "student_loss"]


@dataclass(frozen=True)
class DistillConfig:
    """Weights of the distillation terms; the defaults are the paper's CIFAR-10 setting."""

    beta: float = field(default=1000.0, metadata=option(
        "attention-transfer weight for 3 points, scaled by 3 / points (the recipe's: 1000 cifar, 750 imagenet)"))
    kd_alpha: float = field(default=0.0, metadata=option(
        "Hinton KD weight against CE; 0 trains with CE + AT only, as the paper does"))
    kd_temperature: float = field(default=4.0, metadata=option("KD softmax temperature, the published code's"))

    def __post_init__(self) -> None:
        if not 0 <= self.beta < float("inf"):  # also refuses NaN
            raise BlockSwapError(f"beta must be a finite non-negative number, got {self.beta}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise BlockSwapError(f"KD alpha must be in [0, 1], got {self.kd_alpha}")
        if not 0 < self.kd_temperature < float("inf"):
            raise BlockSwapError(f"KD temperature must be positive, got {self.kd_temperature}")


@dataclass(frozen=True)
class LossParts:
    """The total loss and its terms (detached terms are for logging)."""

    total: Tensor
    ce: Tensor
    attention: Tensor
    kd: Tensor


def attention_map(x: Tensor) -> Tensor:
    """a(x): L2-normalised over H*W of the channel mean of x^2, as an N x (H*W) fp32 tensor."""
    return F.normalize(x.float().pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over all entries of (a(student) - a(teacher))^2 at one point."""
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise BlockSwapError(
            f"attention transfer needs equal batch and spatial sizes, got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}"
        )
    return (attention_map(student) - attention_map(teacher)).pow(2).mean()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature**2


def student_loss(
    logits: Tensor,
    labels: Tensor,
    config: DistillConfig,
    student_points: Sequence[Tensor] = (),
    teacher_points: Sequence[Tensor] = (),
    teacher_logits: Tensor | None = None,
) -> LossParts:
    """CE (or the KD mix) + beta * 3 / points * sum of attention losses; plain CE without a teacher."""
    ce = F.cross_entropy(logits.float(), labels)
    zero = ce.detach() * 0
    if teacher_logits is None:
        return LossParts(ce, ce.detach(), zero, zero)
    if len(student_points) != len(teacher_points):
        raise BlockSwapError(
            f"student has {len(student_points)} attention points but the teacher has {len(teacher_points)}"
        )
    total = ce
    kd = zero
    if config.kd_alpha > 0:
        kd = kd_loss(logits, teacher_logits, config.kd_temperature)
        total = (1 - config.kd_alpha) * ce + config.kd_alpha * kd
    at = zero
    if student_points and config.beta > 0:
        at = sum(attention_loss(s, t) for s, t in zip(student_points, teacher_points))
        total = total + config.beta * 3 / len(student_points) * at
    return LossParts(total, ce.detach(), at.detach(), kd.detach())
