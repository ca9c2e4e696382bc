"""Zero-cost proxies beside Fisher potential, each a registered scorer, for searches and the ranking study.

Every proxy maps a freshly initialised network and one minibatch to a total
(higher means "predicted better", so the search's argmax applies to all of
them) and, where the proxy is a sum over layers, one value per block: the
share of the block's body. Layer sums run over every `nn.Conv2d` and
`nn.Linear` weight of the network, as in the zero-cost-proxy reference
implementation (Abdelfattah et al. 2021, SamsungLabs/zero-cost-nas), so the
total also counts the stem, the shortcuts and the classifier. Networks are in
training mode (BN on batch statistics) unless a proxy says otherwise, and no
proxy changes the weights it is given.

- `fisher_convs`: Fisher potential (Theis et al. 2018) at the output of every
  conv and linear layer, as zero-cost-nas computes it (`fisher` probes only the
  block bodies' outputs, as the paper does).
- `grad_norm`: sum of the L2 norms of the cross-entropy gradients of the
  weights (the paper's Table 1 "grad norms").
- `snip`: sum of |w * dL/dw| (Lee et al. 2019).
- `grasp`: sum of -w * (H g), g the loss gradient, H the Hessian (Wang et al.
  2020, with zero-cost-nas's sign). Signed.
- `synflow`: sum of |w * dR/dw| with R the sum of the outputs of the network
  with every parameter made positive, on one all-ones input in float64
  (Tanaka et al. 2020). BN runs in eval mode on its running statistics, which
  at initialisation makes it the identity up to 1/sqrt(1 + eps): zero-cost-nas
  builds its synflow networks without BN.
- `naswot`: log |det K| of the ReLU activation-pattern kernel of the batch
  (Mellor et al. 2021). No per-block values.
- `jacob_cov`: -sum(log(v + k) + 1 / (v + k)), v the eigenvalues of the
  correlation matrix of the per-image input Jacobians of the summed logits,
  k = 1e-5 (Mellor et al. 2020, v1; zero-cost-nas). No per-block values.
- `l2`: sum of the L2 norms of the weights.
- `params`, `macs`: the network's parameters and multiply-accumulates.
- `accuracy`: the fraction of the batch the network classifies correctly
  (chance at initialisation; meaningful after training steps).
- `trained`: any proxy measured after `steps` SGD steps of the training recipe
  (lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, augmented CIFAR-10
  batches drawn from `data_dir`), as in the paper's Table 1 "after k minibatches".

Each proxy declares its `ScorerInfo` where it is registered: `log_average`
says how `SearchConfig.inits` averages it over several initialisations (the mean
of the log, a geometric mean, for positive proxies; the plain mean for the signed
or already logarithmic ones), `needs_weights` and `needs_data` what it reads.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..space.blocks import block_type
from ..space.genotype import Genotype
from ..space.networks import BlockNetwork
from ..util.errors import BlockSwapError
from .fisher import FastFisherScorer, fisher_from_probes
from .importance import SnipImportance
from .scorer import Score, Scorer, model_state, register_scorer, scorer_factory

__all__ = ["FisherConvsScorer", "GradNormScorer", "SnipScorer", "GraspScorer", "SynflowScorer", "NaswotScorer",
           "JacobCovScorer", "L2Scorer", "ParamsScorer", "MacsScorer", "AccuracyScorer", "layer_owners", "PROXIES"]

JACOB_COV_K = 1e-5  # zero-cost-nas's regulariser of the eigenvalues


register_scorer("fisher", sums_blocks=True)(FastFisherScorer)  # the search's default, under the name the study uses


def layer_owners(model: BlockNetwork) -> list[tuple[nn.Module, int | None]]:
    """Every conv and linear layer in module order, with the index of the block whose body holds it (None outside)."""
    owner: dict[int, int] = {}
    for b, block in enumerate(model.blocks):
        for body in block.body_modules():
            for m in body.modules():
                owner[id(m)] = b
    return [(m, owner.get(id(m))) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _layer_score(model: BlockNetwork, values: Iterable[float]) -> Score:
    """Total over all conv/linear layers, and per block the sum over its body's layers."""
    per_block = [0.0] * len(model.blocks)
    total = 0.0
    for (_, b), v in zip(layer_owners(model), values):
        total += v
        if b is not None:
            per_block[b] += v
    return Score(total, tuple(per_block))


def _weights(model: BlockNetwork) -> list[Tensor]:
    return [m.weight for m, _ in layer_owners(model)]


def _weight_grads(model: BlockNetwork, batch: tuple[Tensor, Tensor], create_graph: bool = False) -> list[Tensor]:
    """Gradients of the mean cross-entropy of the batch with respect to every conv/linear weight."""
    x, y = batch
    loss = F.cross_entropy(model(x), y)
    return list(torch.autograd.grad(loss, _weights(model), create_graph=create_graph))


@register_scorer("fisher_convs")
class FisherConvsScorer:
    """Fisher potential summed over the output channels of every conv and linear layer."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        x, y = batch
        outputs: list[Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m, _ in layer_owners(model)]
        try:
            with model_state(model, True, frozen=True):
                logits = model(x.detach().requires_grad_())
                grads = torch.autograd.grad(F.cross_entropy(logits, y), outputs)
        finally:
            for h in hooks:
                h.remove()
        with torch.no_grad():
            values = [fisher_from_probes(a, g).item() if a.dim() == 4 else 0.5 * (a * g).pow(2).mean(0).sum().item()
                      for a, g in zip(outputs, grads)]
        return _layer_score(model, values)


@register_scorer("grad_norm")
class GradNormScorer:
    """Sum over conv/linear layers of the L2 norm of the loss gradient of the weight."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        with model_state(model, True):
            grads = _weight_grads(model, batch)
        return _layer_score(model, [g.norm().item() for g in grads])


@register_scorer("snip")
class SnipScorer:
    """Sum over conv/linear weights of |w * dL/dw| (connection sensitivity)."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        return _layer_score(model, [s.sum().item() for s in SnipImportance()(model, batch).values()])


@register_scorer("grasp", log_average=False)
class GraspScorer:
    """Sum over conv/linear weights of -w * (H g): gradient signal preservation, one Hessian-vector product."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        with model_state(model, True):
            weights = _weights(model)
            grads = _weight_grads(model, batch, create_graph=True)
            z = sum((g.detach() * g).sum() for g in grads)
            hg = torch.autograd.grad(z, weights, allow_unused=True)
        return _layer_score(model, [0.0 if h is None else (-w.detach() * h).sum().item() for w, h in zip(weights, hg)])


@register_scorer("synflow", needs_data=False)
class SynflowScorer:
    """Sum over conv/linear weights of |w * dR/dw|, R the summed output of the all-positive network on ones."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        net = copy.deepcopy(model).double()
        with torch.no_grad():
            for t in [*net.parameters(), *net.buffers()]:
                if t.is_floating_point():
                    t.abs_()
        net.eval()
        for p in net.parameters():
            p.requires_grad_(True)
        ones = torch.ones((1, *batch[0].shape[1:]), dtype=torch.float64, device=batch[0].device)
        weights = _weights(net)
        grads = torch.autograd.grad(net(ones).sum(), weights)
        return _layer_score(net, [(w.detach() * g).abs().sum().item() for w, g in zip(weights, grads)])


@register_scorer("naswot", log_average=False)
class NaswotScorer:
    """log |det K|, K[i, j] the number of ReLUs on which images i and j agree (both active or both inactive)."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        x = batch[0]
        kernel = torch.zeros(len(x), len(x), dtype=torch.float64, device=x.device)

        def add(_m: nn.Module, _i: object, out: Tensor) -> None:
            # c c^T + (1 - c)(1 - c)^T = 2 c c^T - s_i - s_j + units, s the active counts; one float32 matmul
            # of 0/1 codes is exact (every partial sum is a whole number below 2**24)
            codes = (out.detach().flatten(1) > 0).float()
            active = codes.sum(1, dtype=torch.float64)
            both = (codes @ codes.T).double()
            kernel.add_(2 * both - active[:, None] - active[None, :] + codes.shape[1])

        hooks = [m.register_forward_hook(add) for m in model.modules() if isinstance(m, nn.ReLU)]
        if not hooks:
            raise BlockSwapError("naswot needs nn.ReLU modules in the network; this one has none")
        try:
            with model_state(model, True), torch.no_grad():
                model(x)
        finally:
            for h in hooks:
                h.remove()
        return Score(torch.linalg.slogdet(kernel)[1].item(), ())


@register_scorer("jacob_cov", log_average=False)
class JacobCovScorer:
    """Score of the correlation of per-image input Jacobians: high when images get decorrelated Jacobians."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        x = batch[0].detach().requires_grad_()
        with model_state(model, True, frozen=True):
            (jacobian,) = torch.autograd.grad(model(x).sum(), x)
        corr = torch.corrcoef(jacobian.flatten(1).double())
        if not torch.isfinite(corr).all():  # an image with a constant Jacobian: no correlation, as the reference
            return Score(math.nan, ())
        v = torch.linalg.eigvalsh(corr)
        return Score(-(torch.log(v + JACOB_COV_K) + 1.0 / (v + JACOB_COV_K)).sum().item(), ())


@register_scorer("l2", needs_data=False)
class L2Scorer:
    """Sum over conv/linear layers of the L2 norm of the weight."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        return _layer_score(model, [w.detach().norm().item() for w in _weights(model)])


@register_scorer("params", needs_weights=False, needs_data=False)
class ParamsScorer:
    """The network's trainable parameters; per block, its body's (what the budget window spends)."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        per_block = [float(sum(p.numel() for body in block.body_modules() for p in body.parameters()))
                     for block in model.blocks]
        return Score(float(total), tuple(per_block))


@register_scorer("macs", needs_weights=False, needs_data=False)
class MacsScorer:
    """The network's multiply-accumulates per image (closed form, as `Genotype.macs`); per block, its body's."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        genotype = Genotype(model.backbone, tuple(model.block_names))
        per_block = [float(block_type(n).macs(s.c_in, s.c_out, s.stride, s.size_in))
                     for n, s in zip(genotype.blocks, model.backbone.block_shapes())]
        return Score(float(genotype.macs()), tuple(per_block))


@register_scorer("accuracy", log_average=False)
class AccuracyScorer:
    """The fraction of the batch classified correctly, BN on batch statistics (the paper's "train accuracy")."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score:
        x, y = batch
        with model_state(model, True), torch.no_grad():
            correct = (model(x).argmax(1) == y).double().mean().item()
        return Score(correct, ())


PROXIES: dict[str, Callable[..., Scorer]] = {name: scorer_factory(name) for name in (
    "fisher", "fisher_convs", "grad_norm", "snip", "grasp", "synflow", "naswot", "jacob_cov", "l2", "params", "macs",
    "accuracy")}
