"""The user's own ResNet: layouts read from weights, strict loading, same logits, clear refusals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from blockswap.space.backbones import get_backbone
from blockswap.space.genotype import Genotype
from blockswap.space.networks import build_network
from blockswap.util.errors import BlockSwapError
from blockswap.weights.resnet_import import (
    backbone_from_module,
    backbone_from_state_dict,
    is_weight_file,
    normalize_state_dict,
)
from blockswap.weights.teachers import load_resnet


class Basic(nn.Module):
    """A torchvision-style BasicBlock, written independently of blockswap's networks."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """A torchvision-layout ResNet of any layout; a 7x7 stem strides 2 and max-pools, others do neither."""

    def __init__(self, layout: Sequence[int], widths: Sequence[int], num_classes: int, stem_kernel: int = 7,
                 strides: Sequence[int] | None = None, stem_channels: int | None = None, in_channels: int = 3) -> None:
        super().__init__()
        stem = stem_channels or widths[0]
        imagenet = stem_kernel == 7
        self.conv1 = nn.Conv2d(in_channels, stem, stem_kernel, stride=2 if imagenet else 1,
                               padding=stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet else nn.Identity()
        strides = strides or [1] + [2] * (len(layout) - 1)
        c_in = stem
        for i, (n, width, stride) in enumerate(zip(layout, widths, strides), start=1):
            blocks = [Basic(c_in if j == 0 else width, width, stride if j == 0 else 1) for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            c_in = width
        self.n_stages = len(layout)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        with torch.no_grad():  # trained-looking BN statistics, so eval-mode logits test every BN tensor
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def same_logits(ours: nn.Module, theirs: nn.Module, size: int, in_channels: int = 3) -> None:
    x = torch.randn(3, in_channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs.eval()(x)
        got = ours.eval()(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def model(*args: object, **kwargs: object) -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet(*args, **kwargs)  # type: ignore[arg-type]


def test_imagenet_layout_is_read_and_the_teacher_gives_the_same_logits() -> None:
    theirs = model([1, 1, 2, 1], (32, 64, 128, 256), 5)
    state = theirs.state_dict()
    b = backbone_from_state_dict(state)
    assert (b.stage_lengths, b.stage_widths, b.stage_strides) == ((1, 1, 2, 1), (32, 64, 128, 256), (1, 2, 2, 2))
    assert (b.num_classes, b.in_channels, b.stem_channels, b.stem_kernel) == (5, 3, 32, 7)
    assert (b.stem_stride, b.stem_pool, b.input_size, b.post_activation) == (2, True, 224, True)
    assert b.name == "user-resnet"

    net, genotype = load_resnet(state)
    assert genotype == Genotype.uniform(b, "Conv")
    assert n_params(net) == n_params(theirs) == genotype.params()
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    same_logits(net, theirs, 64)


def test_cifar_stem_three_stages_and_one_input_channel() -> None:
    theirs = model([2, 1, 3], (16, 32, 64), 7, stem_kernel=3, stem_channels=8, in_channels=1)
    b = backbone_from_state_dict(theirs.state_dict(), input_size=28)
    assert (b.stage_lengths, b.stage_widths, b.stage_strides) == ((2, 1, 3), (16, 32, 64), (1, 2, 2))
    assert (b.stem_kernel, b.stem_stride, b.stem_pool, b.stem_channels, b.in_channels) == (3, 1, False, 8, 1)
    assert (b.input_size, b.num_classes) == (28, 7)
    assert backbone_from_state_dict(theirs.state_dict()).input_size == 32
    net, _ = load_resnet(theirs.state_dict())
    same_logits(net, theirs, 32, in_channels=1)


def test_strides_from_shapes_where_they_decide_them() -> None:
    """Same width: a downsample means stride 2, none means stride 1, whatever the convention says."""
    for strides in [(1, 2, 1), (2, 1, 2)]:
        theirs = model([1, 2, 1], (16, 16, 16), 3, stem_kernel=3, strides=strides)
        b = backbone_from_state_dict(theirs.state_dict())
        assert b.stage_strides == strides
        same_logits(load_resnet(theirs.state_dict())[0], theirs, 32)


def test_module_gives_strides_the_weights_cannot() -> None:
    theirs = model([1, 1, 1], (16, 32, 64), 4, stem_kernel=3, strides=(1, 1, 2))
    assert backbone_from_state_dict(theirs.state_dict()).stage_strides == (1, 2, 2)  # the documented convention
    b = backbone_from_module(theirs)
    assert b.stage_strides == (1, 1, 2)
    net, genotype = load_resnet(theirs)
    assert genotype.backbone == b
    same_logits(net, theirs, 32)
    wrong, _ = load_resnet(theirs.state_dict())  # the convention's stride 2 in stage 2: other logits
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(wrong.eval()(x), theirs.eval()(x), atol=1e-3)


def test_module_reads_stem_stride_pool_and_other_kernels() -> None:
    theirs = model([1, 1], (8, 16), 3, stem_kernel=5)
    with pytest.raises(BlockSwapError, match="5x5 stem"):
        backbone_from_state_dict(theirs.state_dict())
    b = backbone_from_module(theirs)
    assert (b.stem_kernel, b.stem_stride, b.stem_pool, b.input_size) == (5, 1, False, 32)
    same_logits(load_resnet(theirs)[0], theirs, 32)

    imagenet = model([1, 1], (8, 16), 3)
    b = backbone_from_module(nn.DataParallel(imagenet), input_size=96)
    assert (b.stem_stride, b.stem_pool, b.input_size) == (2, True, 96)


def test_a_module_whose_forward_differs_is_refused() -> None:
    class MaxHead(TinyResNet):
        def forward(self, x: Tensor) -> Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer2(self.layer1(x))
            return self.fc(torch.amax(x, dim=(2, 3)))

    torch.manual_seed(0)
    with pytest.raises(BlockSwapError, match="differ"):
        load_resnet(MaxHead([1, 1], (8, 16), 3, stem_kernel=3))


def test_wrappers_and_prefixes_read_the_same() -> None:
    state = model([1, 1], (8, 16), 3, stem_kernel=3).state_dict()
    other = {k: v + 1 for k, v in state.items()}
    module = {f"module.{k}": v for k, v in state.items()}
    wrapped = [
        state,
        {"state_dict": state, "epoch": 3},
        {"model": state},
        {"model_state_dict": state, "optimizer_state_dict": {}},
        {"state_dict_ema": state},
        {"state_dict": state, "state_dict_ema": other},
        module,
        {"state_dict": module},
        {f"model.{k}": v for k, v in state.items()},  # a Lightning module's attribute
        {f"_orig_mod.module.{k}": v for k, v in state.items()},
    ]
    for obj in wrapped:
        got = normalize_state_dict(obj)
        assert list(got) == list(state)
        assert all(got[k] is state[k] for k in state)
        assert backbone_from_state_dict(obj) == backbone_from_state_dict(state)


def test_pytorch_cifar_names_map_to_torchvision() -> None:
    theirs = model([1, 1], (8, 16), 3, stem_kernel=3)
    renamed = {k.replace("downsample", "shortcut").replace("fc.", "linear."): v for k, v in theirs.state_dict().items()}
    assert any("shortcut" in k for k in renamed)
    assert normalize_state_dict(renamed).keys() == theirs.state_dict().keys()
    same_logits(load_resnet(renamed)[0], theirs, 32)


def test_weight_files(tmp_path: Path) -> None:
    theirs = model([1, 2], (8, 16), 3, stem_kernel=3)
    path = tmp_path / "my_resnet.pth"
    torch.save({"state_dict": theirs.state_dict(), "epoch": 9}, path)
    net, genotype = load_resnet(path, name="mine")
    assert genotype.backbone.name == "mine"
    same_logits(net, theirs, 32)
    assert load_resnet(str(path))[1].backbone.name == "user-resnet"

    assert is_weight_file(str(path))
    (tmp_path / "dir.pt").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    for text in ["resnet18", "wrn-40-2", str(tmp_path / "missing.pth"), str(tmp_path / "dir.pt"),
                 str(tmp_path / "notes.txt"), "", "x" * 5000 + ".pt"]:
        assert not is_weight_file(text), text
    for suffix in [".pt", ".PTH", ".bin", ".ckpt"]:
        (tmp_path / f"w{suffix}").write_bytes(b"")
        assert is_weight_file(str(tmp_path / f"w{suffix}"))


def test_a_blockswap_teacher_checkpoint_keeps_its_genotype(tmp_path: Path) -> None:
    genotype = Genotype.uniform(get_backbone("wrn-16-1"))
    torch.manual_seed(0)
    teacher = genotype.build()
    torch.save({"genotype": genotype.to_dict(), "state_dict": teacher.state_dict()}, tmp_path / "last.pt")
    net, got = load_resnet(tmp_path / "last.pt")
    assert got == genotype
    same_logits(net, teacher, 32)

    student = Genotype(genotype.backbone, ("DConv",) + genotype.blocks[1:])
    torch.save({"genotype": student.to_dict(), "state_dict": student.build().state_dict()}, tmp_path / "s.pt")
    with pytest.raises(BlockSwapError, match="student"):
        load_resnet(tmp_path / "s.pt")


def test_registered_resnet18_layout_reads_back_exactly() -> None:
    resnet18 = get_backbone("resnet18")
    state = build_network(resnet18, ["Conv"] * resnet18.num_blocks, init=False).state_dict()
    assert backbone_from_state_dict(state, name="resnet18") == resnet18
    assert Genotype.uniform(backbone_from_state_dict(state, name="resnet18")).to_dict().get("backbone") is None


def test_genotype_of_a_read_backbone_round_trips() -> None:
    b = backbone_from_state_dict(model([1, 1, 2, 1], (32, 64, 128, 256), 5).state_dict())
    genotype = Genotype.uniform(b)
    data = genotype.to_dict()
    assert data["backbone"]["stage_lengths"] == [1, 1, 2, 1]
    assert Genotype.from_dict(data) == genotype


def _edit(state: dict[str, Tensor], case: str) -> dict[str, Tensor]:
    s = dict(state)
    if case == "bottleneck":
        s["layer1.0.conv3.weight"] = torch.zeros(8, 8, 1, 1)
    elif case == "deep stem":
        s = {k.replace("conv1.weight", "conv1.0.weight") if k == "conv1.weight" else k: v for k, v in s.items()}
    elif case == "avg down":
        s = {k.replace("layer2.0.downsample.1.", "layer2.0.downsample.2.")
             .replace("layer2.0.downsample.0.", "layer2.0.downsample.1."): v for k, v in s.items()}
    elif case == "stem pool conv":
        s["maxpool.0.weight"] = torch.zeros(8, 8, 3, 3)
    elif case == "no fc":
        del s["fc.weight"], s["fc.bias"]
    elif case == "sequential fc":
        s["fc.1.weight"], s["fc.1.bias"] = s.pop("fc.weight"), s.pop("fc.bias")
    elif case == "widths":
        s["layer2.1.conv1.weight"] = torch.zeros(24, 16, 3, 3)
    elif case == "conv2":
        s["layer2.1.conv2.weight"] = torch.zeros(16, 12, 3, 3)
    elif case == "bn":
        s["layer1.0.bn2.running_var"] = torch.ones(9)
    elif case == "no downsample":
        s = {k: v for k, v in s.items() if not k.startswith("layer2.0.downsample.")}
    elif case == "5x5 body":
        s["layer1.0.conv2.weight"] = torch.zeros(8, 8, 5, 5)
    elif case == "squeeze excitation":
        s["layer1.0.se.fc1.weight"] = torch.zeros(2, 8, 1, 1)
    elif case == "stage gap":
        s = {k.replace("layer2.", "layer3."): v for k, v in s.items()}
    elif case == "not a tensor":
        s["layer1.0.conv1.weight"] = [1, 2]  # type: ignore[assignment]
    elif case == "conv bias":
        s["layer1.0.conv1.bias"] = torch.zeros(8)
    return s


@pytest.mark.parametrize("case,message", [
    ("bottleneck", "mix BasicBlocks and Bottlenecks \\('layer1.0.conv3.weight' but no 'layer2.0.conv3.weight'\\)"),
    ("deep stem", "deep stem .*'conv1.0.weight'"),
    ("avg down", "avg-pool downsample .*'layer2.0.downsample.1.weight'"),
    ("stem pool conv", "'maxpool.0.weight'"),
    ("no fc", "no 'fc.weight'"),
    ("sequential fc", "no 'fc.weight'.*found 'fc.1.bias'"),
    ("widths", "'layer2.1.conv1.weight' has 24 output channels .*same width"),
    ("conv2", "'layer2.1.conv2.weight' takes 12 input channels"),
    ("bn", "'layer1.0.bn2.running_var' has shape \\[9\\]"),
    ("no downsample", "layer2.0 changes 8 to 16 channels .*'layer2.0.downsample.0.weight'"),
    ("5x5 body", "'layer1.0.conv2.weight' is a 5x5 conv; expected 3x3"),
    ("squeeze excitation", "unexpected key 'layer1.0.se.fc1.weight'"),
    ("stage gap", "layer3 but no layer2"),
    ("not a tensor", "'layer1.0.conv1.weight' of the state dict holds a value of type list"),
    ("conv bias", "'layer1.0.conv1.bias'"),
])
def test_refusals_name_the_problem_in_one_line(case: str, message: str) -> None:
    state = _edit(model([1, 2], (8, 16), 3, stem_kernel=3).state_dict(), case)
    with pytest.raises(BlockSwapError, match=message) as caught:
        load_resnet(state)
    assert "\n" not in str(caught.value)


def test_a_teacher_keeps_its_classes() -> None:
    state = model([1, 1], (8, 16), 5, stem_kernel=3).state_dict()
    assert load_resnet(state, num_classes=5)[1].backbone.num_classes == 5
    with pytest.raises(BlockSwapError, match="5 classes but 10"):
        load_resnet(state, num_classes=10)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BlockSwapError, match="missing.pth"):
        load_resnet(tmp_path / "missing.pth")


def _five_class_folder(root: Path) -> Path:
    """train/ and val/ with 5 classes of small flat-colour JPEGs (class = colour), so the test owns its data."""
    from PIL import Image

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 2)):
        for c, colour in enumerate(colours):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(-20, 21, (48, 48, 3), generator=rng)
                pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return root


def test_a_torchvision_layout_state_dict_is_searched_and_distilled_from_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's acceptance: stages [1, 1, 2, 1] at widths 32-256, 5 classes, as a bare torchvision state dict."""
    import json

    from blockswap.cli import main

    weights = tmp_path / "my_resnet.pth"
    torch.save(model([1, 1, 2, 1], (32, 64, 128, 256), 5).state_dict(), weights)
    data = str(_five_class_folder(tmp_path / "images"))
    assert main(["info", str(weights)]) == 0
    assert "my_resnet, 5 classes, input 224x224" in capsys.readouterr().out
    teacher = Genotype.uniform(backbone_from_state_dict(torch.load(weights)))
    budget = str(teacher.params() // 2)
    assert main(["search", "--model", str(weights), "--budget", budget, "--samples", "3", "--batch-size", "8",
                 "--data-dir", data, "--workers", "1", "--quiet", "--out", str(tmp_path / "search")]) == 0
    best = json.loads((tmp_path / "search" / "best.json").read_text())
    assert best["backbone"]["stage_lengths"] == [1, 1, 2, 1] and best["num_classes"] == 5
    assert abs(best["params"] - int(budget)) < 0.025 * int(budget)
    assert main(["train", "student", "--genotype", str(tmp_path / "search" / "best.json"), "--teacher", str(weights),
                 "--data-dir", data, "--recipe", "imagenet", "--epochs", "1", "--batch-size", "10",
                 "--precision", "fp32", "--loader-workers", "0", "--quiet", "--out", str(tmp_path / "student")]) == 0
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["teacher_genotype"]["backbone"]["stage_widths"] == [32, 64, 128, 256]
    assert config["weight_decay"] == 1e-4 and config["distill"]["beta"] == 750.0 and config["cutout"] == 0
    final = json.loads((tmp_path / "student" / "final.json").read_text())
    metrics = json.loads((tmp_path / "student" / "metrics.jsonl").read_text().splitlines()[0])
    assert final["blocks"] == best["blocks"] and metrics["train_at"] > 0
