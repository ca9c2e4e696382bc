"""Zero-cost proxies (blockswap.scoring.proxies) against independent computations on tiny networks.

Every reference below recomputes its proxy's formula another way (retained
output gradients, forward-over-reverse Hessian products, hand-written SGD,
NumPy linear algebra) and splits it over blocks by module name, never through
the proxies' own helpers. Networks and batches are float64 where the proxy
allows it, so the comparisons are tight.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blockswap as bs
from blockswap.cli import main
from blockswap.scoring.proxies import PROXIES
from blockswap.scoring.scorer import Score, average_scores
from blockswap.scoring.trained import RecipeSteps
from blockswap.search.pool import build_candidate, score_genotype
from blockswap.space.blocks import block_type
from blockswap.util.errors import BlockSwapError

LAYERS = (nn.Conv2d, nn.Linear)
WRN = bs.Genotype(bs.get_backbone("wrn-10-1"), ("Conv", "G4B2", "DConv"))
# A post-activation (torchvision-layout) backbone small enough for float64 Hessian products.
TINY_POST = bs.Backbone("tiny-post", (1, 2), (8, 16), (1, 2), post_activation=True, stem_channels=8,
                        stem_pool=True, input_size=16)
POST = bs.Genotype(TINY_POST, ("G4B2", "Conv", "DConv"))
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> Iterator[None]:
    """Another job shares this machine's two cores: two torch threads would only wait on each other."""
    yield


@pytest.fixture(scope="module")
def probe() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = bs.load_embedded_sample().probe_batch(16, 0)
    return x[:8], y[:8]


@pytest.fixture(scope="module", params=["wrn-10-1", "tiny-post"])
def case(request: pytest.FixtureRequest, probe: tuple[torch.Tensor, torch.Tensor]
         ) -> tuple[bs.BlockNetwork, tuple[torch.Tensor, torch.Tensor]]:
    """A freshly initialised float64 network and a float64 batch of 8 images; deep-copy before use."""
    torch.manual_seed(11)
    if request.param == "wrn-10-1":
        net = WRN.build().double()
        x, y = probe[0].double(), probe[1]
    else:
        net = POST.build().double()
        g = torch.Generator().manual_seed(5)
        x, y = torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 10, (8,), generator=g)
    return net, (x, y)


# ---------------------------------------------------------------- independent bookkeeping


def layers(net: nn.Module) -> dict[str, nn.Module]:
    """Every conv and linear layer by qualified name."""
    return {n: m for n, m in net.named_modules() if isinstance(m, LAYERS)}


def body_layer_names(net: bs.BlockNetwork) -> list[set[str]]:
    """Per block, the qualified names of its body's layers: everything in the block but its shortcut."""
    qualified = {id(m): n for n, m in net.named_modules()}
    per_block = []
    for block in net.blocks:
        per_block.append({qualified[id(m)] for sub, m in block.named_modules()
                          if isinstance(m, LAYERS) and not sub.startswith(("shortcut", "downsample"))})
    return per_block


def assert_layer_score(score: Score, net: bs.BlockNetwork, values: dict[str, float], rel: float = 1e-7) -> None:
    """`score` is the sum of `values` (one per conv/linear layer) and per block the sum over its body."""
    assert set(values) == set(layers(net))
    names = body_layer_names(net)
    assert all(names) and not set.intersection(*names)
    total = math.fsum(values.values())
    per_block = [math.fsum(values[n] for n in block) for block in names]
    scale = math.fsum(abs(v) for v in values.values())
    assert isinstance(score, Score) and len(score.per_block) == len(net.blocks)
    assert score.total == pytest.approx(total, rel=rel, abs=rel * scale)
    assert list(score.per_block) == pytest.approx(per_block, rel=rel, abs=rel * scale)


def without_running_stats(net: nn.Module) -> nn.Module:
    """BN on batch statistics with no buffers to update (train-mode behaviour, usable under torch.func)."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return net


# ---------------------------------------------------------------- references


def fisher_reference(net: bs.BlockNetwork, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """0.5 * mean_n (sum_hw a * dL/da)^2 summed over channels at every conv/linear output, via retain_grad."""
    net = copy.deepcopy(net).train()
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            out.retain_grad()
            outputs[name] = out
        return hook

    for name, m in layers(net).items():
        m.register_forward_hook(keep(name))
    F.cross_entropy(net(x), y).backward()
    values = {}
    for name, a in outputs.items():
        per_channel = (a * a.grad).sum(dim=(2, 3)) if a.dim() == 4 else a * a.grad  # N x C
        values[name] = 0.5 * per_channel.pow(2).mean(0).sum().item()
    return values


def weight_grads(net: bs.BlockNetwork, x: torch.Tensor,
                 y: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(weight, dL/dweight) of every conv/linear layer, from loss.backward() on a copy in train mode."""
    net = copy.deepcopy(net).train()
    F.cross_entropy(net(x), y).backward()
    return {n: (m.weight.detach(), m.weight.grad) for n, m in layers(net).items()}


def grasp_reference(net: bs.BlockNetwork, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """-w * (H g) with H g by forward-over-reverse (torch.func.jvp of torch.func.grad) on the weights alone."""
    net = without_running_stats(copy.deepcopy(net).train())
    names = list(layers(net))
    weights = tuple(m.weight.detach().clone() for m in layers(net).values())
    argnums = tuple(range(len(weights)))

    def loss(*ws: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(net, {f"{n}.weight": w for n, w in zip(names, ws)}, (x,))
        return F.cross_entropy(out, y)

    g = torch.func.grad(loss, argnums=argnums)(*weights)
    _, hg = torch.func.jvp(torch.func.grad(loss, argnums=argnums), weights, g)
    return {n: -(w * h).sum().item() for n, w, h in zip(names, weights, hg)}


def synflow_reference(net: bs.BlockNetwork, input_shape: tuple[int, ...]) -> dict[str, float]:
    """|w * dR/dw|, R the summed output of the |state| float64 copy in eval mode on one all-ones image."""
    net = copy.deepcopy(net).double().eval()
    with torch.no_grad():
        for value in net.state_dict().values():
            if value.is_floating_point():
                value.abs_()
    net(torch.ones(1, *input_shape, dtype=torch.float64)).sum().backward()
    return {n: (m.weight * m.weight.grad).abs().sum().item() for n, m in layers(net).items()}


def naswot_reference(net: bs.BlockNetwork, x: torch.Tensor) -> float:
    """log|det K|, K = sum over ReLU calls of c c^T + (1 - c)(1 - c)^T, c the 0/1 activity codes (NumPy)."""
    net = copy.deepcopy(net).train()
    codes: list[np.ndarray] = []
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda _m, _i, out: codes.append((out.detach().flatten(1) > 0).numpy()))
    with torch.no_grad():
        net(x)
    assert codes
    kernel = np.zeros((len(x), len(x)))
    for c in codes:
        c = c.astype(np.float64)
        kernel += c @ c.T + (1 - c) @ (1 - c).T
    sign, logdet = np.linalg.slogdet(kernel)
    assert sign != 0
    return float(logdet)


def jacob_cov_reference(net: bs.BlockNetwork, x: torch.Tensor) -> float:
    """Input gradients of the batch's summed logits (a vector-Jacobian product with ones), scored with NumPy."""
    net = copy.deepcopy(net).train()
    out = net(x)
    _, (jacobian,) = torch.autograd.functional.vjp(lambda inp: net(inp), (x,), torch.ones_like(out))
    corr = np.corrcoef(jacobian.reshape(len(x), -1).detach().numpy())
    v = np.linalg.eig(corr)[0].real
    k = 1e-5
    return float(-np.sum(np.log(v + k) + 1.0 / (v + k)))


# ---------------------------------------------------------------- each proxy against its reference


def test_fisher_convs_matches_retained_output_gradients(case) -> None:
    net, (x, y) = case
    score = bs.make_scorer("fisher_convs")(copy.deepcopy(net), (x, y))
    assert_layer_score(score, net, fisher_reference(net, x, y))
    assert score.total > 0 and all(v > 0 for v in score.per_block)


def test_fisher_convs_in_float32_is_within_noise_of_float64(case) -> None:
    net, (x, y) = case
    score = bs.make_scorer("fisher_convs")(copy.deepcopy(net).float(), (x.float(), y))
    assert_layer_score(score, net, fisher_reference(net, x, y), rel=1e-3)


def test_grad_norm_is_the_sum_of_weight_gradient_norms(case) -> None:
    net, (x, y) = case
    score = bs.make_scorer("grad_norm")(copy.deepcopy(net), (x, y))
    assert_layer_score(score, net, {n: g.norm().item() for n, (_, g) in weight_grads(net, x, y).items()})


def test_snip_is_the_sum_of_abs_weight_times_gradient(case) -> None:
    net, (x, y) = case
    score = bs.make_scorer("snip")(copy.deepcopy(net), (x, y))
    assert_layer_score(score, net, {n: (w * g).abs().sum().item() for n, (w, g) in weight_grads(net, x, y).items()})


def test_snip_and_grad_norm_in_float32(case) -> None:
    net, (x, y) = case
    grads = weight_grads(net, x, y)
    small = (x.float(), y)
    assert_layer_score(bs.make_scorer("snip")(copy.deepcopy(net).float(), small), net,
                       {n: (w * g).abs().sum().item() for n, (w, g) in grads.items()}, rel=1e-3)
    assert_layer_score(bs.make_scorer("grad_norm")(copy.deepcopy(net).float(), small), net,
                       {n: g.norm().item() for n, (_, g) in grads.items()}, rel=1e-3)


def test_grasp_matches_a_forward_over_reverse_hessian_product(case) -> None:
    net, (x, y) = case
    score = bs.make_scorer("grasp")(copy.deepcopy(net), (x, y))
    values = grasp_reference(net, x, y)
    assert_layer_score(score, net, values, rel=1e-6)
    assert any(v < 0 for v in values.values()) or score.total != 0  # signed, and not trivially zero


def test_synflow_uses_the_positive_float64_network_on_ones(case) -> None:
    net, (x, y) = case
    score = bs.make_scorer("synflow")(copy.deepcopy(net).float(), (x.float(), y))
    values = synflow_reference(net, tuple(x.shape[1:]))
    assert_layer_score(score, net, values, rel=1e-6)  # float64 inside whatever the model's dtype
    assert all(v > 0 for v in values.values())


def test_synflow_ignores_the_batch_content_and_size(case) -> None:
    net, (x, y) = case
    a = bs.make_scorer("synflow")(copy.deepcopy(net), (x, y))
    b = bs.make_scorer("synflow")(copy.deepcopy(net), (torch.randn_like(x[:3]) * 7, y[:3]))
    assert a == b


def test_naswot_is_the_log_determinant_of_the_relu_code_kernel(case) -> None:
    net, (x, y) = case
    score = bs.make_scorer("naswot")(copy.deepcopy(net), (x, y))
    assert score.per_block == ()
    assert score.total == pytest.approx(naswot_reference(net, x), rel=1e-9)


def test_naswot_in_float32_matches_numpy_on_the_same_codes(probe) -> None:
    torch.manual_seed(3)
    net = WRN.build()
    score = bs.make_scorer("naswot")(copy.deepcopy(net), probe)
    assert score.total == pytest.approx(naswot_reference(net, probe[0]), rel=1e-9)


def test_naswot_without_relus_is_refused() -> None:
    class NoRelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(BlockSwapError, match="nn.ReLU"):
        bs.make_scorer("naswot")(NoRelu(), (torch.randn(4, 4), torch.zeros(4, dtype=torch.long)))


def test_jacob_cov_matches_numpy_eigenvalues_of_the_jacobian_correlation(case) -> None:
    net, (x, y) = case
    score = bs.make_scorer("jacob_cov")(copy.deepcopy(net), (x, y))
    assert score.per_block == ()
    assert score.total == pytest.approx(jacob_cov_reference(net, x), rel=1e-7)


def test_l2_is_the_sum_of_weight_norms(case) -> None:
    net, (x, y) = case
    score = bs.make_scorer("l2")(copy.deepcopy(net), (x, y))
    assert_layer_score(score, net, {n: m.weight.detach().norm().item() for n, m in layers(net).items()})


@pytest.mark.parametrize("genotype", [WRN, POST], ids=["wrn-10-1", "tiny-post"])
def test_params_and_macs_are_the_genotype_counts(genotype: bs.Genotype) -> None:
    torch.manual_seed(0)
    net = genotype.build()
    size = genotype.backbone.input_size
    batch = (torch.randn(2, 3, size, size), torch.zeros(2, dtype=torch.long))
    shapes = genotype.backbone.block_shapes()
    post = genotype.backbone.post_activation

    params = bs.make_scorer("params")(net, batch)
    assert params.total == genotype.params() == sum(p.numel() for p in net.parameters())
    assert len(params.per_block) == len(genotype.blocks)
    assert list(params.per_block) == [block_type(n).params(s.c_in, s.c_out, s.stride, post)
                                      for n, s in zip(genotype.blocks, shapes)]
    qualified = {n: p for n, p in net.named_parameters()}
    for block_names, value in zip(body_layer_names(net), params.per_block):  # conv weights plus the bodies' BNs
        assert value >= sum(qualified[f"{n}.weight"].numel() for n in block_names)

    # MACs counted on the built network: per output element, in_channels / groups * kernel area (or in_features)
    counted: dict[str, int] = {}

    def count(name: str):
        def hook(m: nn.Module, _i: object, out: torch.Tensor) -> None:
            per_image = out[0].numel()
            counted[name] = per_image * (m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                                         if isinstance(m, nn.Conv2d) else m.in_features)
        return hook

    for name, m in layers(net).items():
        m.register_forward_hook(count(name))
    with torch.no_grad():
        net.eval()(batch[0][:1])
    macs = bs.make_scorer("macs")(net, batch)
    assert macs.total == genotype.macs() == sum(counted.values())
    assert list(macs.per_block) == [sum(counted[n] for n in block) for block in body_layer_names(net)]


def test_accuracy_is_the_train_mode_hit_rate(probe) -> None:
    torch.manual_seed(4)
    net = WRN.build().eval()
    x, y = probe
    with torch.no_grad():
        predicted = copy.deepcopy(net).train()(x).argmax(1)
    for labels in (y, predicted, (predicted + 1) % 10):  # real labels, then all right, then all wrong
        score = bs.make_scorer("accuracy")(net, (x, labels))
        assert score.per_block == ()
        assert score.total == pytest.approx((predicted == labels).double().mean().item())
    assert bs.make_scorer("accuracy")(net, (x, predicted)).total == 1.0
    assert bs.make_scorer("accuracy")(net, (x, (predicted + 1) % 10)).total == 0.0
    assert not net.training


@pytest.mark.parametrize("name", [n for n in PROXIES if n != "trained"] + ["trained"])
def test_no_proxy_changes_the_weights_mode_or_gradient_flags(name: str, probe) -> None:
    torch.manual_seed(6)
    net = WRN.build().eval()
    net.fc.bias.requires_grad_(False)  # a flag a proxy must give back as it found it
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    flags = {k: v.requires_grad for k, v in net.named_parameters()}
    settings = {"proxy": "snip", "steps": 1, "batch_size": 16} if name == "trained" else None
    score = bs.make_scorer(name, settings)(net, probe)
    assert isinstance(score, Score) and isinstance(score.total, float)
    assert not net.training
    for k, v in net.named_parameters():
        assert torch.equal(before[k], v), k
        assert v.requires_grad == flags[k] and v.grad is None, k
    assert score.per_block == () or len(score.per_block) == 3


def test_every_proxy_is_registered_with_its_info() -> None:
    names = bs.scorer_names()
    for name in PROXIES:
        assert name in names
        assert bs.scorer_info(bs.make_scorer(name)) == bs.scorer_info(name)  # a built scorer is known by its class
    assert {n for n in PROXIES if not bs.scorer_info(n).log_average} == {"grasp", "naswot", "jacob_cov", "accuracy"}
    assert {n for n in PROXIES if not bs.scorer_info(n).needs_weights} == {"params", "macs"}
    assert {n for n in PROXIES if not bs.scorer_info(n).needs_data} == {"synflow", "l2", "params", "macs"}
    assert bs.scorer_info(bs.make_scorer("trained", {"proxy": "naswot", "steps": 1})).log_average is False
    assert bs.scorer_info(bs.make_scorer("trained", {"proxy": "snip", "steps": 1})).log_average is True


def test_declared_independence_holds(probe) -> None:
    """A proxy that says it needs no data scores other images alike; one that needs no weights, other weights."""
    x, y = probe
    other = (torch.randn_like(x), (y + 1) % 10)
    for name in PROXIES:
        info, scorer = bs.scorer_info(name), bs.make_scorer(name)
        torch.manual_seed(0)
        net = WRN.build()
        if not info.needs_data:
            assert scorer(net, probe) == scorer(net, other), name
        if not info.needs_weights:
            torch.manual_seed(1)
            assert scorer(net, probe) == scorer(WRN.build(), probe), name


def test_a_signed_plugin_declares_its_averaging_at_registration(probe) -> None:
    """A plugin of negative values that declares log_average=False averages to their mean, not NaN."""

    class NegativeL2:
        def __call__(self, model, batch):  # type: ignore[no-untyped-def]
            return bs.Score(-bs.make_scorer("l2")(model, batch).total, ())

    if "test-negative-l2" not in bs.scorer_names():
        bs.register_scorer("test-negative-l2", log_average=False, needs_data=False)(NegativeL2)
    scorer = bs.make_scorer("test-negative-l2")
    assert bs.scorer_info(scorer) == bs.ScorerInfo(log_average=False, needs_weights=True, needs_data=False)
    draws = [scorer(build_candidate(WRN, 3, 5, draw), probe).total for draw in range(3)]
    averaged = score_genotype(WRN, 5, 3, probe, scorer, inits=3)
    assert averaged.total == pytest.approx(sum(draws) / 3, rel=1e-12) and averaged.total < 0


# ---------------------------------------------------------------- training steps


def manual_sgd(net: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float = 0.1,
               momentum: float = 0.9, weight_decay: float = 5e-4) -> list[dict[str, torch.Tensor]]:
    """SGD with momentum and L2 weight decay written out; the parameters after each step."""
    net = copy.deepcopy(net).train()
    params = dict(net.named_parameters())
    velocity = {k: torch.zeros_like(p) for k, p in params.items()}
    after = []
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(params.values()))
        with torch.no_grad():
            for (k, p), g in zip(params.items(), grads):
                velocity[k] = momentum * velocity[k] + g + weight_decay * p
                p -= lr * velocity[k]
        after.append({k: p.detach().clone() for k, p in params.items()})
    return after


def test_recipe_batches_are_seeded_slices_of_the_training_images() -> None:
    recipe = RecipeSteps(batch_size=16, seed=2)
    first = list(recipe.batches(3, CPU))
    again = list(RecipeSteps(batch_size=16, seed=2).batches(3, CPU))
    other = list(RecipeSteps(batch_size=16, seed=3).batches(1, CPU))
    sample = bs.load_embedded_sample()
    order = torch.randperm(len(sample), generator=torch.Generator().manual_seed(2))
    for step, (x, y) in enumerate(first):
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(y, sample.labels[order[16 * step:16 * (step + 1)]])
        assert torch.equal(x, again[step][0]) and torch.equal(y, again[step][1])
    assert not torch.equal(first[0][0], other[0][0])


def test_trained_scorer_equals_two_hand_written_sgd_steps_then_the_proxy() -> None:
    torch.manual_seed(7)
    net = WRN.build()
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    batch = bs.load_embedded_sample().probe_batch(8, 1)
    score = bs.make_scorer("trained", {"proxy": "l2", "steps": 2})(net, batch)
    batches = list(RecipeSteps().batches(2, CPU))
    assert len(batches[0][0]) == 128
    trained = manual_sgd(net, batches)[-1]
    expected = {n: trained[f"{n}.weight"].norm().item() for n in layers(net)}
    assert_layer_score(score, net, expected, rel=1e-5)
    untrained = bs.make_scorer("l2")(net, batch)
    assert score.total != pytest.approx(untrained.total, rel=1e-4)  # the steps did move the weights
    assert all(torch.equal(before[k], v) for k, v in net.named_parameters())


def test_recipe_run_yields_the_copy_after_each_checkpoint() -> None:
    torch.manual_seed(8)
    net = WRN.build()
    recipe = RecipeSteps(batch_size=16, seed=4)
    batches = list(recipe.batches(3, CPU))
    expected = manual_sgd(net, batches)
    seen = []
    for k, trained in recipe.run(net, [3, 1, 3], CPU):
        seen.append(k)
        assert trained is not net and trained.training
        assert all(p.grad is None for p in trained.parameters())
        for name, p in trained.named_parameters():
            torch.testing.assert_close(p.detach(), expected[k - 1][name], rtol=1e-4, atol=1e-5)
    assert seen == [1, 3]


@pytest.mark.parametrize("steps", [0, -1, True, 1.5, "2"])
def test_trained_scorer_refuses_bad_steps(steps: object) -> None:
    with pytest.raises(BlockSwapError, match="steps"):
        bs.make_scorer("trained", {"proxy": "l2", "steps": steps})


def test_trained_scorer_refuses_itself_and_unknown_proxies() -> None:
    with pytest.raises(BlockSwapError, match="not itself"):
        bs.make_scorer("trained", {"proxy": "trained", "steps": 1})
    with pytest.raises(BlockSwapError, match="unknown scorer"):
        bs.make_scorer("trained", {"proxy": "magic", "steps": 1})


@pytest.mark.parametrize("checkpoints", [[0], [-1, 2], [], [True], [1.5]])
def test_recipe_run_refuses_bad_checkpoints(checkpoints: list[object]) -> None:
    torch.manual_seed(9)
    net = WRN.build()
    with pytest.raises(BlockSwapError, match="positive whole numbers"):
        next(RecipeSteps(batch_size=16).run(net, checkpoints, CPU))


# ---------------------------------------------------------------- several initialisations


def test_average_scores_on_hand_values() -> None:
    a, b = Score(1.0, (2.0, 8.0)), Score(4.0, (8.0, 2.0))
    geometric = average_scores([a, b], log_average=True)
    assert geometric.total == pytest.approx(2.0) and geometric.per_block == pytest.approx((4.0, 4.0))
    plain = average_scores([a, b], log_average=False)
    assert plain.total == 2.5 and plain.per_block == (5.0, 5.0)
    assert average_scores([a], True) is a and average_scores([a], False) is a
    signed = [Score(-1.0, ()), Score(3.0, ())]
    assert math.isnan(average_scores(signed, True).total)
    assert average_scores(signed, False) == Score(1.0, ())
    assert math.isnan(average_scores([Score(float("nan"), ()), Score(2.0, ())], True).total)
    assert average_scores([Score(0.0, ()), Score(2.0, ())], True).total == 0.0
    three = average_scores([Score(1.0, ()), Score(10.0, ()), Score(100.0, ())], True)
    assert three.total == pytest.approx(10.0)
    mixed = average_scores([Score(1.0, (1.0,)), Score(4.0, ())], True)  # per-block widths differ: none kept
    assert mixed.total == pytest.approx(2.0) and mixed.per_block == ()


@pytest.mark.parametrize("name", ["l2", "naswot", "fisher"])
def test_score_genotype_averages_over_draws(name: str, probe) -> None:
    scorer = bs.make_scorer(name)
    seed, index = 3, 5
    single = score_genotype(WRN, index, seed, probe, scorer)
    draws = [scorer(build_candidate(WRN, seed, index, draw), probe) for draw in range(3)]
    assert single == draws[0] == score_genotype(WRN, index, seed, probe, scorer, inits=1)
    assert len({d.total for d in draws}) == 3  # the draws are different initialisations
    averaged = score_genotype(WRN, index, seed, probe, scorer, inits=3)
    totals = np.array([d.total for d in draws])
    if bs.scorer_info(name).log_average:
        expected_total = float(np.exp(np.log(totals).mean()))
        expected_blocks = np.exp(np.log(np.array([d.per_block for d in draws])).mean(0))
    else:
        expected_total = float(totals.mean())
        expected_blocks = np.array([d.per_block for d in draws]).mean(0) if draws[0].per_block else np.zeros(0)
    assert averaged.total == pytest.approx(expected_total, rel=1e-12)
    assert list(averaged.per_block) == pytest.approx(list(expected_blocks), rel=1e-12)


# ---------------------------------------------------------------- searches with a proxy


def test_search_with_naswot_resumes_without_rescoring(tmp_path: Path) -> None:
    config = bs.SearchConfig(budget=40_000, model="wrn-10-1", samples=4, batch_size=16, screen=False,
                             scorer="naswot", seed=1)
    result = bs.run_search(config, tmp_path, progress=False)
    assert result.scored_now == 4 and result.non_finite == 0
    assert all(c.score_per_block == () for c in result.candidates)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["scorer"] == "naswot" and best["score"] == max(c.score for c in result.candidates)
    x, y = bs.load_embedded_sample().probe_batch(16, 1)
    top = result.best
    assert top.score == pytest.approx(naswot_reference(build_candidate(top.genotype, 1, top.index), x), rel=1e-9)
    again = bs.run_search(config, tmp_path, progress=False)
    assert again.scored_now == 0
    assert [c.score for c in again.candidates] == [c.score for c in result.candidates]


def test_search_records_inits_and_averages_the_draws(tmp_path: Path) -> None:
    config = bs.SearchConfig(budget=40_000, model="wrn-10-1", samples=2, batch_size=16, screen=False,
                             scorer="l2", inits=2, seed=2)
    result = bs.run_search(config, tmp_path, progress=False)
    record = json.loads((tmp_path / "search.json").read_text())
    assert record["inits"] == 2 and record["scorer"] == "l2"
    for c in result.candidates:
        l2 = [sum(m.weight.norm().item() for m in layers(build_candidate(c.genotype, 2, c.index, d)).values())
              for d in range(2)]
        assert c.score == pytest.approx(math.sqrt(l2[0] * l2[1]), rel=1e-6)
        assert len(c.score_per_block) == 3
    with pytest.raises(BlockSwapError, match="inits"):  # the record is the search's: another inits is refused
        bs.run_search(bs.SearchConfig(**{**config.__dict__, "inits": 1}), tmp_path, progress=False)


def test_cli_search_with_snip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["search", "--budget", "40k", "--samples", "2", "--model", "wrn-10-1", "--batch-size", "8",
                 "--no-screen", "--scorer", "snip", "--workers", "1", "--device", "cpu", "--quiet", "--out", str(out)])
    assert code == 0
    best = json.loads((out / "best.json").read_text())
    assert best["scorer"] == "snip" and best["score"] > 0 and len(best["blocks"]) == 3
    assert json.loads((out / "search.json").read_text())["scorer"] == "snip"
    capsys.readouterr()


def test_a_trained_search_takes_the_search_data_and_seed(tmp_path: Path, cifar_root: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`--scorer trained` trains on the search's --data-dir with its seed unless the settings say otherwise."""
    seen: list[tuple[object, int]] = []
    real = RecipeSteps.batches

    def spy(self: RecipeSteps, steps: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seen.append((self.data_dir, self.seed))
        return real(self, steps, device)

    monkeypatch.setattr(RecipeSteps, "batches", spy)
    config = bs.SearchConfig(budget=40_000, model="wrn-10-1", samples=2, batch_size=16, screen=False, seed=3,
                             data_dir=str(cifar_root), scorer="trained", scorer_settings={"proxy": "l2", "steps": 1})
    bs.run_search(config, tmp_path / "a", progress=False)
    assert seen == [(str(cifar_root), 3)] * 2
    seen.clear()
    other = bs.SearchConfig(**{**config.__dict__, "scorer_settings": {"proxy": "l2", "steps": 1, "seed": 9}})
    bs.run_search(other, tmp_path / "b", progress=False)
    assert seen == [(str(cifar_root), 9)] * 2
