"""Networks: published parameter/MAC counts, torchvision key layout, taps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from blockswap.space.backbones import Backbone
from blockswap.space.blocks import DEFAULT_PALETTE
from blockswap.space.genotype import Genotype
from blockswap.space.networks import build_network
from blockswap.util.errors import BlockSwapError

STUDENT_400K = ("Conv DConvG16 DConv DConvA2 ConvB2 DConvA8 DConvG2 DConvG16 DConvA8 DConvA16 DConvG8 DConvA4 "
                "DConvG4 DConvG4 A4B2 DConvG8 DConvG8 G16B2").split()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flop_macs(model: torch.nn.Module, size: int) -> int:
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() // 2


def test_wrn_40_2_teacher_params_and_macs() -> None:
    g = Genotype.uniform(Backbone.from_name("wrn-40-2"))
    model = g.build()
    assert n_params(model) == g.params() == 2_243_546
    assert abs(g.macs() - 328.3e6) / 328.3e6 < 0.01
    assert flop_macs(model, 32) == g.macs()


def test_published_400k_student_params() -> None:
    g = Genotype(Backbone.from_name("wrn-40-2"), tuple(STUDENT_400K))
    assert n_params(g.build()) == g.params() == 404_250


@pytest.mark.parametrize("name,params", [("resnet18", 11_689_512), ("resnet34", 21_797_672)])
def test_resnet_teacher_counts_match_torchvision(name: str, params: int) -> None:
    g = Genotype.uniform(Backbone.from_name(name))
    assert g.params() == n_params(g.build()) == params


@pytest.mark.parametrize("model", ["wrn-16-1", "wrn-22-4", "resnet18"])
def test_random_genotype_closed_forms_equal_real_counts(model: str) -> None:
    backbone = Backbone.from_name(model)
    rng = np.random.default_rng(1)
    shapes = backbone.block_shapes()
    blocks = []
    for s in shapes:
        valid = [n for n in DEFAULT_PALETTE if DEFAULT_PALETTE[n].is_valid(s.c_in, s.c_out, s.stride)]
        blocks.append(valid[rng.integers(len(valid))])
    g = Genotype(backbone, tuple(blocks))
    net = g.build()
    assert n_params(net) == g.params()
    assert flop_macs(net, backbone.input_size) == g.macs()


def _torchvision_resnet_state_dict(layout: tuple[int, ...], num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A state dict written in torchvision's resnet key layout, with random values."""
    sd: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        sd.update({f"{prefix}.weight": torch.rand(c), f"{prefix}.bias": torch.rand(c),
                   f"{prefix}.running_mean": torch.rand(c), f"{prefix}.running_var": torch.rand(c) + 0.5,
                   f"{prefix}.num_batches_tracked": torch.tensor(7)})

    sd["conv1.weight"] = torch.randn(64, 3, 7, 7)
    bn("bn1", 64)
    c_in = 64
    for stage, (n, width) in enumerate(zip(layout, (64, 128, 256, 512)), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            sd[f"{p}.conv1.weight"] = torch.randn(width, c_in, 3, 3)
            bn(f"{p}.bn1", width)
            sd[f"{p}.conv2.weight"] = torch.randn(width, width, 3, 3)
            bn(f"{p}.bn2", width)
            if i == 0 and (stage > 1):
                sd[f"{p}.downsample.0.weight"] = torch.randn(width, c_in, 1, 1)
                bn(f"{p}.downsample.1", width)
            c_in = width
    sd["fc.weight"] = torch.randn(num_classes, 512)
    sd["fc.bias"] = torch.randn(num_classes)
    return sd


@pytest.mark.parametrize("name,layout", [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))])
def test_all_conv_resnet_loads_torchvision_state_dict_unchanged(name: str, layout: tuple[int, ...]) -> None:
    sd = _torchvision_resnet_state_dict(layout)
    model = Genotype.uniform(Backbone.from_name(name)).build()
    model.load_state_dict(sd, strict=True)
    assert set(model.state_dict()) == set(sd)
    assert torch.equal(model.layer3[0].downsample[0].weight, sd["layer3.0.downsample.0.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])


@pytest.mark.vision
def test_torchvision_resnet_forward_matches_when_available() -> None:
    tv = pytest.importorskip("torchvision.models")
    ref = tv.resnet18().eval()
    model = Genotype.uniform(Backbone.from_name("resnet18")).build().eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), ref(x))


@pytest.mark.parametrize("model,stages", [("wrn-16-2", 3), ("resnet18", 4)])
def test_forward_taps_exposes_stages_and_probes(model: str, stages: int) -> None:
    backbone = Backbone.from_name(model)
    net = Genotype.uniform(backbone, "G4B2").build().eval()
    x = torch.randn(2, 3, 32, 32)
    taps = net.forward_taps(x)
    torch.testing.assert_close(taps.logits, net(x))
    assert len(taps.stages) == stages and len(taps.probes) == backbone.num_blocks
    for probe, shape in zip(taps.probes, backbone.block_shapes()):
        assert probe.shape[1] == shape.c_out
    assert taps.stages[-1].shape[1] == backbone.stage_widths[-1]


def test_wrn_block_structure_is_preactivation() -> None:
    net = build_network(Backbone.from_name("wrn-16-1"), ["Conv"] * 6)
    block = net.blocks[0]
    assert block.shortcut is None  # 16 -> 16, stride 1: identity shortcut
    assert net.blocks[2].shortcut is not None and net.blocks[2].shortcut.stride == (2, 2)
    assert isinstance(net.fc, torch.nn.Linear) and torch.count_nonzero(net.fc.bias) == 0


def test_init_follows_spec() -> None:
    torch.manual_seed(0)
    net = Genotype.uniform(Backbone.from_name("wrn-16-8")).build()
    conv = net.blocks[-1].body.conv2  # 512 -> 512 3x3
    assert abs(conv.weight.std().item() - (2.0 / (9 * 512)) ** 0.5) < 0.002
    assert torch.all(net.blocks[-1].bn.weight == 1) and torch.all(net.blocks[-1].bn.bias == 0)


@pytest.mark.parametrize("name,message", [
    ("wrn-41-2", "6n\\+4"), ("resnet20", "18, 34"), ("vgg16", "valid choices"), ("wrn-40-0", "width")])
def test_bad_models_are_rejected_with_choices(name: str, message: str) -> None:
    with pytest.raises(BlockSwapError, match=message):
        Backbone.from_name(name)


def test_backbone_shapes_wrn_40_2() -> None:
    shapes = Backbone.from_name("wrn-40-2").block_shapes()
    assert len(shapes) == 18
    assert (shapes[0].c_in, shapes[0].c_out, shapes[0].stride, shapes[0].size_in) == (16, 32, 1, 32)
    assert (shapes[6].c_in, shapes[6].c_out, shapes[6].stride, shapes[6].size_in) == (32, 64, 2, 32)
    assert (shapes[17].c_in, shapes[17].size_in) == (128, 8)
