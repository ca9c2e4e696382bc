"""Bottleneck ResNets as teachers (issue 22): registered layouts, files read from their shapes, exact counts,
the same logits as torchvision's and timm's modules, and set-up that never builds the teacher's bodies."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from blockswap.space.backbones import Backbone, get_backbone, models_with_blocks
from blockswap.space.blocks import BlockType, block_type, bottleneck_name, has_block_type
from blockswap.space.genotype import Genotype
from blockswap.space.networks import build_network, build_skeleton, fixed_costs
from blockswap.util.errors import BlockSwapError
from blockswap.weights.resnet_import import backbone_from_module, backbone_from_state_dict
from blockswap.weights.teachers import load_resnet

# torchvision's builders, their teacher type, and sum(p.numel()) of torchvision's module (1000 classes).
TORCHVISION = {
    "resnet50": ("ConvB4", 25_557_032),
    "resnet101": ("ConvB4", 44_549_160),
    "resnet152": ("ConvB4", 60_192_808),
    "wide_resnet50_2": ("ConvB2", 68_883_240),
    "wide_resnet101_2": ("ConvB2", 126_886_696),
    "resnext50_32x4d": ("A32B2", 25_028_904),
    "resnext101_32x8d": ("A32B1", 88_791_336),
    "resnext101_64x4d": ("A64B1", 83_455_272),
}


class Bottleneck(nn.Module):
    """A torchvision-style Bottleneck (v1.5: the stride in the 3x3 conv2), written independently of blockswap."""

    def __init__(self, c_in: int, inner: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TinyBottleneckResNet(nn.Module):
    """torchvision's ResNet layout (7x7/2 stem, max-pool) with Bottlenecks of any widths and groups per stage."""

    def __init__(self, layout: Sequence[int], inner: Sequence[int], widths: Sequence[int],
                 groups: Sequence[int], num_classes: int = 7, stem: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = stem
        for i, (n, m, width, g) in enumerate(zip(layout, inner, widths, groups), start=1):
            blocks = [Bottleneck(c_in if j == 0 else width, m, width, (1 if i == 1 else 2) if j == 0 else 1, g)
                      for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            c_in = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        self.stages = len(layout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomise_batch_norms(module: nn.Module, seed: int = 1) -> nn.Module:
    """Random BN statistics and affine values, so eval mode is a real check of every BN; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return module.eval()


def max_gap(reference: nn.Module, net: nn.Module, size: int = 64) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, ours = reference.eval()(x), net.eval()(x)
    assert theirs.abs().max() > 1e-3  # not a trivially zero output
    return (theirs - ours).abs().max().item()


# --- registered layouts and closed-form counts (no torchvision needed) ---

@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_registered_bottleneck_resnets_count_as_torchvision(name: str) -> None:
    teacher, params = TORCHVISION[name]
    backbone = get_backbone(name)
    assert backbone.teacher_block == teacher and backbone.post_activation and backbone.num_classes == 1000
    genotype = Genotype.uniform(backbone)
    assert genotype.blocks == (teacher,) * backbone.num_blocks
    assert genotype.params() == params


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_closed_form_counts_equal_the_built_body_at_every_slot(name: str) -> None:
    backbone = get_backbone(name)
    kind = block_type(backbone.teacher_block)
    for shape in dict.fromkeys(backbone.block_shapes()):  # each distinct slot once
        body = kind.build(shape.c_in, shape.c_out, shape.stride, post_activation=True)
        assert kind.params(shape.c_in, shape.c_out, shape.stride, True) == sum(p.numel() for p in body.parameters())


def test_small_bottleneck_network_counts_equal_its_modules() -> None:
    backbone = Backbone("tiny-b", (2, 2), (32, 64), (1, 2), post_activation=True, stem_channels=8, stem_kernel=7,
                        stem_stride=2, stem_pool=True, input_size=64, num_classes=5, teacher_block="A4B2")
    net = Genotype.uniform(backbone).build()
    assert Genotype.uniform(backbone).params() == sum(p.numel() for p in net.parameters())
    skeleton = build_skeleton(backbone)
    assert fixed_costs(backbone).params == sum(p.numel() for p in skeleton.parameters())
    bodies = sum(p.numel() for block in net.blocks for body in block.body_modules() for p in body.parameters())
    assert fixed_costs(backbone).params == sum(p.numel() for p in net.parameters()) - bodies
    assert set(skeleton.state_dict()) <= set(net.state_dict())  # the skeleton's modules are the network's own


def test_bottleneck_names_resolve_on_use_in_a_fresh_process() -> None:
    code = ("from blockswap.space.blocks import registered_block_types, block_type\n"
            "assert 'A32B1' not in registered_block_types()\n"
            "t = block_type('A32B1'); assert t.convs(256, 256, 2)[1].groups == 32\n"
            "assert block_type('G8B3').convs(48, 48, 1)[1].groups == 2\n"
            "assert 'A32B1' in registered_block_types()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_bottleneck_names() -> None:
    assert (bottleneck_name(4), bottleneck_name(2, 32), bottleneck_name(1, 64)) == ("ConvB4", "A32B2", "A64B1")
    assert bottleneck_name(2, group_channels=8) == "G8B2"
    assert block_type("ConvB4") is block_type(bottleneck_name(4))  # the published type, not a new one
    assert has_block_type("A32B2") and has_block_type("ConvB1")
    for name in ("A1B2", "G1B2", "A0B2", "ConvB0", "A32B02", "Conv4"):
        assert not has_block_type(name)
        with pytest.raises(BlockSwapError, match=f"unknown block type '{name}'"):
            block_type(name)


def test_teacher_block_in_the_backbone_spec() -> None:
    wrn = get_backbone("wrn-16-2")
    assert wrn.teacher_block == "Conv" and "teacher_block" not in wrn.to_dict()  # files of earlier versions
    r50 = get_backbone("resnext50_32x4d")
    assert r50.to_dict()["teacher_block"] == "A32B2" and Backbone.from_dict(r50.to_dict()) == r50
    with pytest.raises(BlockSwapError, match="unknown block type 'Nope'"):
        Backbone("x", (1,), (8,), (1,), post_activation=True, stem_channels=8, teacher_block="Nope")
    with pytest.raises(BlockSwapError, match="teacher block ConvB4 cannot be built at 8->10 channels"):
        Backbone("x", (1,), (10,), (1,), post_activation=True, stem_channels=8, teacher_block="ConvB4")


def test_resnet_depths_and_suggestions() -> None:
    assert get_backbone("resnet34").teacher_block == "Conv" and get_backbone("resnet-50").name == "resnet50"
    assert get_backbone("ResNet152").stage_lengths == (3, 8, 36, 3)
    with pytest.raises(BlockSwapError, match=r"ResNet depth must be one of \[18, 34, 50, 101, 152\], got 20"):
        get_backbone("resnet20")
    assert dict(models_with_blocks(16, like=get_backbone("resnet34"))) == {"resnet34": ()}
    assert "resnet50" in dict(models_with_blocks(16, like=get_backbone("resnet50")))
    assert {"resnet34", "resnet50", "wide_resnet50_2", "resnext50_32x4d"} <= set(dict(models_with_blocks(16)))


def test_fixed_costs_builds_no_teacher_body(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> nn.Module:
        raise AssertionError("fixed_costs built a block body")

    monkeypatch.setattr(BlockType, "build", refuse)
    fixed_costs.cache_clear()
    start = time.perf_counter()
    for name in TORCHVISION:
        costs = fixed_costs(get_backbone(name))
        assert costs.params > 0 and costs.macs > 0
    assert time.perf_counter() - start < 60  # seconds for all eight even on a loaded machine (the bodies: minutes)
    fixed_costs.cache_clear()


def test_fixed_costs_equal_the_whole_network_less_its_bodies() -> None:
    """The skeleton counts what the full network holds outside its bodies (parameters and MACs), on small nets."""
    from torch.utils.flop_counter import FlopCounterMode

    backbone = Backbone("tiny-b", (1, 2), (16, 32), (1, 2), post_activation=True, stem_channels=8, stem_kernel=7,
                        stem_stride=2, stem_pool=True, input_size=48, num_classes=3, teacher_block="ConvB4")
    net = Genotype.uniform(backbone).build().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, 48, 48))
    body_macs = sum(block_type("ConvB4").macs(s.c_in, s.c_out, s.stride, s.size_in) for s in backbone.block_shapes())
    assert fixed_costs(backbone).macs == counter.get_total_flops() // 2 - body_macs
    assert Genotype.uniform(backbone).macs() == counter.get_total_flops() // 2


# --- files of the family read from their shapes, and modules from their convs ---

LAYOUTS = {  # (inner widths, output widths, groups) per stage; the expected teacher type
    "ConvB4": ((4, 8, 16), (16, 32, 64), (1, 1, 1)),
    "ConvB2": ((8, 16, 32), (16, 32, 64), (1, 1, 1)),
    "A4B2": ((8, 16, 32), (16, 32, 64), (4, 4, 4)),
    "A8B1": ((16, 32, 64), (16, 32, 64), (8, 8, 8)),
    "G4B2": ((8, 16, 32), (16, 32, 64), (2, 4, 8)),
}


@pytest.mark.parametrize("teacher", sorted(LAYOUTS))
def test_bottleneck_files_and_modules_read_as_their_teacher(teacher: str) -> None:
    inner, widths, groups = LAYOUTS[teacher]
    torch.manual_seed(0)
    module = randomise_batch_norms(TinyBottleneckResNet((2, 1, 2), inner, widths, groups))
    from_weights = backbone_from_state_dict(module.state_dict(), input_size=64)
    assert from_weights.teacher_block == teacher and from_weights.stage_widths == widths
    assert from_weights.stage_strides == (1, 2, 2) and from_weights.num_classes == 7
    assert backbone_from_module(module, input_size=64) == from_weights
    net, genotype = load_resnet(module.state_dict(), input_size=64)
    assert genotype == Genotype.uniform(from_weights)
    assert genotype.params() == sum(p.numel() for p in module.parameters())
    assert max_gap(module, net) < 1e-5
    load_resnet(module, input_size=64)  # the module path checks the outputs itself
    restored = Genotype.from_dict(genotype.to_dict())
    assert restored == genotype and restored.backbone.teacher_block == teacher



def test_bottleneck_weights_read_the_same_through_prefixes_and_wrappers() -> None:
    """DataParallel/DDP `module.` prefixes, torch.compile's `_orig_mod.`, and training-script dicts around the
    weights: each reads as the bare state dict does."""
    inner, widths, groups = LAYOUTS["A4B2"]
    torch.manual_seed(0)
    state = randomise_batch_norms(TinyBottleneckResNet((2, 1, 2), inner, widths, groups)).state_dict()
    bare_net, bare = load_resnet(state, input_size=64)
    assert bare.backbone.teacher_block == "A4B2"
    x = torch.randn(2, 3, 64, 64)
    for wrapped in ({f"module.{k}": v for k, v in state.items()},
                    {"state_dict": {f"_orig_mod.module.{k}": v for k, v in state.items()}, "epoch": 3},
                    {"model_state_dict": state, "optimizer_state_dict": {}}):
        net, genotype = load_resnet(wrapped, input_size=64)
        assert genotype == bare
        with torch.no_grad():
            assert torch.equal(net.eval()(x), bare_net.eval()(x))

def _bottleneck_state(**changes: object) -> dict[str, Tensor]:
    inner, widths, groups = LAYOUTS["A4B2"]
    args = {"inner": inner, "widths": widths, "groups": groups, **changes}
    return dict(TinyBottleneckResNet((1, 1, 1), args["inner"], args["widths"], args["groups"]).state_dict())


@pytest.mark.parametrize("state,message", [
    (lambda: _bottleneck_state(inner=(8, 16, 24)), "widen their inner channels by other than one whole ratio "
     r"\(8->16, 16->32, 24->64\)"),
    (lambda: _bottleneck_state(groups=(2, 4, 2)), "conv2 have 2, 4, 2 groups in their stages"),
    (lambda: {k: v for k, v in _bottleneck_state().items() if k != "layer2.0.conv3.weight"},
     "mix BasicBlocks and Bottlenecks"),
    (lambda: {**_bottleneck_state(), "layer1.0.conv2.weight": torch.zeros(8, 3, 3, 3)},
     "'layer1.0.conv2.weight' takes 3 input channels per group, which does not divide the 8 channels"),
    (lambda: {**_bottleneck_state(), "layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3)},
     "'layer1.0.conv1.weight' is a 3x3 conv; expected 1x1"),
])
def test_bottleneck_refusals_are_one_line(state: object, message: str) -> None:
    with pytest.raises(BlockSwapError, match=message) as caught:
        load_resnet(state())  # type: ignore[operator]
    assert "\n" not in str(caught.value)


def test_a_v1_bottleneck_module_is_refused_by_its_strides() -> None:
    module = TinyBottleneckResNet((1, 1), (4, 8), (16, 32), (1, 1))
    block = module.layer2[0]
    block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)  # v1: the 1x1 conv strides
    with pytest.raises(BlockSwapError, match=r"layer2.0.conv1 has stride 2: a block downsamples in its conv2 \(v1.5"):
        backbone_from_module(module)


# --- the real modules: torchvision's eight and timm's resnet50 (random weights, no downloads) ---

@pytest.mark.parametrize("name", sorted(TORCHVISION))
@pytest.mark.vision
def test_torchvision_bottleneck_resnets_give_the_same_logits(name: str) -> None:
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    reference = randomise_batch_norms(getattr(models, name)())
    assert sum(p.numel() for p in reference.parameters()) == TORCHVISION[name][1]
    read = backbone_from_state_dict(reference.state_dict(), name=name)
    assert read == get_backbone(name)  # the registered name and the file's shapes agree
    net, genotype = load_resnet(reference.state_dict(), name=name, input_size=64)
    assert genotype.params() == sum(p.numel() for p in reference.parameters())
    gap = max_gap(reference, net)
    print(f"{name}: max abs difference {gap:.3g}")
    assert gap < 1e-5


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
@pytest.mark.vision
def test_torchvision_modules_read_from_their_convs(name: str) -> None:
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    reference = randomise_batch_norms(getattr(models, name)())
    assert backbone_from_module(reference, name=name) == get_backbone(name)
    net, _ = load_resnet(reference, name=name, input_size=64)
    assert max_gap(reference, net) < 1e-5


@pytest.mark.vision
def test_timm_resnet50_gives_the_same_logits() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = randomise_batch_norms(timm.create_model("resnet50", pretrained=False))
    assert backbone_from_state_dict(reference.state_dict(), name="resnet50") == get_backbone("resnet50")
    net, genotype = load_resnet(reference, name="resnet50", input_size=64)
    assert genotype.params() == sum(p.numel() for p in reference.parameters())
    gap = max_gap(reference, net)
    print(f"timm resnet50: max abs difference {gap:.3g}")
    assert gap < 1e-5


def test_build_network_of_a_bottleneck_teacher_has_torchvision_keys() -> None:
    backbone = Backbone("tiny-b", (1, 1), (16, 32), (1, 2), post_activation=True, stem_channels=8, stem_kernel=7,
                        stem_stride=2, stem_pool=True, input_size=32, num_classes=3, teacher_block="ConvB4")
    keys = set(build_network(backbone, ["ConvB4"] * 2).state_dict())
    assert {"layer1.0.conv3.weight", "layer1.0.bn3.running_var", "layer2.0.downsample.0.weight"} <= keys
    assert set(TinyBottleneckResNet((1, 1), (4, 8), (16, 32), (1, 1), num_classes=3).state_dict()) == keys


# --- a Bottleneck teacher through the whole pipeline (no torchvision needed) ---

def test_resnet50_attention_points_are_its_four_stage_outputs() -> None:
    """Attention transfer from a ResNet-50 teacher compares the stage outputs at 256, 512, 1024, 2048 channels."""
    from blockswap.train.distill import DistillConfig, student_loss

    backbone = get_backbone("resnet50", num_classes=10)
    teacher = Genotype.uniform(backbone).build().eval()
    student = Genotype(backbone, ("G8B4",) * backbone.num_blocks).validate().build().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t, s = teacher.forward_taps(x), student.forward_taps(x)
    assert [p.shape[1] for p in t.stages] == [p.shape[1] for p in s.stages] == [256, 512, 1024, 2048]
    assert [p.shape[2] for p in t.stages] == [16, 8, 4, 2]
    loss = student_loss(s.logits, torch.tensor([1, 7]), DistillConfig(), s.stages, t.stages, t.logits)
    assert torch.isfinite(loss.total) and loss.attention > 0
    assert loss.total == pytest.approx((loss.ce + 1000.0 * 3 / 4 * loss.attention).item(), rel=1e-5)


def _colour_folder(root: Path, classes: int = 3) -> Path:
    """train/ and val/ of small noisy flat-colour PNGs, the class is the colour: data the test owns."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 3)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            colour = torch.tensor([200 if c == k else 40 for k in range(3)])
            for i in range(n):
                noise = torch.randint(-20, 21, (40, 40, 3), generator=rng)
                Image.fromarray((colour + noise).clamp(0, 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return root


def test_a_bottleneck_teacher_from_search_to_export_on_the_cli(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A torchvision-layout Bottleneck ResNet's bare state dict: info, search (params, then params and MACs), a
    student distilled from it, eval and ONNX export, each from the command line."""
    from blockswap.cli import main

    weights = tmp_path / "tiny50.pth"
    torch.manual_seed(0)
    torch.save(TinyBottleneckResNet((1, 2, 1, 1), (8, 16, 16, 32), (32, 64, 64, 128), (1, 1, 1, 1),
                                    num_classes=3).state_dict(), weights)
    data = str(_colour_folder(tmp_path / "images"))
    assert main(["info", str(weights)]) == 0
    shown = capsys.readouterr().out
    assert "tiny50, 3 classes, input 224x224" in shown and shown.count("ConvB4") == 5
    teacher = Genotype.uniform(backbone_from_state_dict(torch.load(weights)))
    assert teacher.backbone.teacher_block == "ConvB4" and teacher.params() == 46_603
    common = ["--model", str(weights), "--samples", "6", "--batch-size", "8", "--workers", "1", "--quiet"]
    capsys.readouterr()
    assert main(["search", "--budget", "40k", *common, "--out", str(tmp_path / "cifar")]) == 2
    err = capsys.readouterr().err  # the embedded CIFAR-10 sample has 10 classes; no registered model has this layout
    assert err.rstrip().endswith("use data with 3 classes (the file's head)") and not (tmp_path / "cifar").exists()
    common += ["--data-dir", data]
    assert main(["search", "--budget", "40k", *common, "--out", str(tmp_path / "search")]) == 0
    best = json.loads((tmp_path / "search" / "best.json").read_text())
    assert best["backbone"]["teacher_block"] == "ConvB4" and best["num_classes"] == 3
    assert abs(best["params"] - 40_000) <= 0.025 * 40_000 and best["params"] < teacher.params()
    assert main(["search", "--budget", "40k", "--budget-macs", "30M", *common, "--out", str(tmp_path / "macs")]) == 0
    assert json.loads((tmp_path / "macs" / "best.json").read_text())["macs"] <= 30_000_000
    capsys.readouterr()
    assert main(["latency", "--model", str(weights), "--min-time", "0.01", "--check", "0", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)  # the teacher's predicted time bounds the students' from above
    budget_ms = table["fixed_ms"] + sum(table["ms"]["ConvB4"])
    assert main(["search", "--budget", "40k", "--budget-ms", f"{budget_ms:.4f}", *common,
                 "--out", str(tmp_path / "ms")]) == 0
    timed = json.loads((tmp_path / "ms" / "best.json").read_text())
    assert 0 < timed["latency_ms"] <= budget_ms * 1.03 and (tmp_path / "ms" / "latency.json").is_file()

    student = tmp_path / "student"
    assert main(["train", "student", "--genotype", str(tmp_path / "search" / "best.json"), "--teacher", str(weights),
                 "--data-dir", data, "--epochs", "1", "--batch-size", "6", "--precision", "fp32",
                 "--loader-workers", "0", "--quiet", "--out", str(student)]) == 0
    config = json.loads((student / "config.json").read_text())
    assert config["teacher_genotype"]["blocks"] == ["ConvB4"] * 5
    metrics = json.loads((student / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["train_at"] > 0  # attention transfer from the Bottleneck teacher's stage outputs
    final = json.loads((student / "final.json").read_text())
    assert final["blocks"] == best["blocks"] and final["params"] == best["params"]

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(student / "last.pt"), "--data-dir", data, "--precision", "fp32",
                 "--latency-batch-sizes", "1", "--min-time", "0.01", "--loader-workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == best["params"] and report["test_error_pct"] == pytest.approx(final["test_error_pct"])
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)
    assert main(["export", "--checkpoint", str(student / "last.pt"), "--format", "onnx",
                 "--out", str(tmp_path / "student.onnx")]) == 0
    assert (tmp_path / "student.onnx").stat().st_size > 10_000
