"""The Table 2 baselines MBConv6 and DARTS: exact counts at every slot, outside the default palette, trainable,
exportable; and `info --plot`, the picture of a genotype."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import blockswap as bs
from blockswap.cli import main
from blockswap.space.blocks import BASELINE_NAMES, DARTS_V2, DEFAULT_PALETTE, PALETTE_NAMES, CellSpec
from blockswap.space.drawing import plot_genotype
from blockswap.util.counts import format_count
from blockswap.util.errors import BlockSwapError

MODELS = ("wrn-16-2", "wrn-40-2", "resnet34")


def _slots(model: str) -> list[tuple[str, int, int, int, int]]:
    """Every distinct block shape of `model` (so every slot is covered) with its real input size."""
    return sorted({(model, s.c_in, s.c_out, s.stride, s.size_in) for s in bs.get_backbone(model).block_shapes()})


SLOTS = [slot for model in MODELS for slot in _slots(model)]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def counted_macs(module: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module.eval()(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", BASELINE_NAMES)
@pytest.mark.parametrize("slot", SLOTS, ids=[f"{m}-{a}-{b}-s{s}-{h}" for m, a, b, s, h in SLOTS])
def test_closed_form_counts_equal_the_built_body_at_every_slot(name: str, slot: tuple) -> None:
    model, c_in, c_out, stride, size = slot
    post = bs.get_backbone(model).post_activation
    kind = bs.block_type(name)
    assert kind.is_valid(c_in, c_out, stride)
    body = kind.build(c_in, c_out, stride, post)
    assert kind.params(c_in, c_out, stride, post) == n_params(body)
    assert kind.macs(c_in, c_out, stride, size) == counted_macs(body, torch.zeros(1, c_in, size, size))


@pytest.mark.parametrize("name", BASELINE_NAMES)
@pytest.mark.parametrize("model", MODELS)
def test_whole_network_counts_equal_the_built_network(name: str, model: str) -> None:
    genotype = bs.Genotype.uniform(bs.get_backbone(model), name).validate()
    net = genotype.build()
    assert genotype.params() == n_params(net)
    if model == "wrn-16-2":  # whole-network MACs at 32x32; the per-slot test covers the rest
        assert genotype.macs() == counted_macs(net, torch.zeros(1, 3, 32, 32))


def _paper_ops(genotype: bs.Genotype, body_relus: int = 0) -> int:
    """MACs as the published count_ops.py counts them: also every nn.ReLU's input elements and the Linear bias."""
    b = genotype.backbone
    shapes = b.block_shapes()
    last = shapes[-1]
    relus = sum(s.c_in * s.size_in ** 2 for s in shapes) + last.c_out * (last.size_in // last.stride) ** 2
    return genotype.macs() + relus + body_relus + b.num_classes


def test_table2_counts_of_wrn_40_2() -> None:
    """Paper: MBConv6 1500.9K / 231.7M, DARTS 321.5K / 52.8M. Ours are pinned; why they differ is in the docs."""
    wrn = bs.get_backbone("wrn-40-2")
    mbconv, darts = (bs.Genotype.uniform(wrn, name) for name in ("MBConv6", "DARTS"))
    assert (mbconv.params(), mbconv.macs()) == (1_500_986, 231_384_320)
    assert abs(mbconv.params() - 1_500_900) / 1_500_900 < 1e-4  # the published code's MBConv6 block for block
    # The paper's ops also count ReLU elements (the published MBConv6 calls F.relu, uncounted, inside its body).
    assert round(_paper_ops(mbconv) / 1e5) / 10 == 231.7
    teacher = bs.Genotype.uniform(wrn)
    mid_relus = sum(s.c_out * (s.size_in // s.stride) ** 2 for s in wrn.block_shapes())
    assert round(_paper_ops(teacher, mid_relus) / 1e5) / 10 == 328.3  # the same convention gives Table 2's teacher
    assert (darts.params(), darts.macs()) == (185_146, 31_681_792)


def test_baselines_are_registered_but_outside_the_default_palette() -> None:
    assert BASELINE_NAMES == ("MBConv6", "DARTS")
    assert len(DEFAULT_PALETTE) == len(PALETTE_NAMES) == 23
    assert not set(BASELINE_NAMES) & set(PALETTE_NAMES) and not set(BASELINE_NAMES) & set(DEFAULT_PALETTE)
    assert set(BASELINE_NAMES) <= set(bs.registered_block_types())
    assert all(bs.block_type(n).family == "baseline" for n in BASELINE_NAMES)
    with pytest.raises(ValueError, match="at least one"):
        DEFAULT_PALETTE.families("baseline")
    config = bs.SearchConfig(budget=30_000, model="wrn-10-1", palette=["MBConv6", "DARTS"])
    assert config.palette_types().names == ["MBConv6", "DARTS"]
    drawn = bs.sample_genotypes(bs.get_backbone("wrn-10-1"), 30_000, 2, seed=0, palette=config.palette_types())
    assert [g.blocks for g in drawn] == [("MBConv6", "DARTS", "MBConv6")] * 2  # the one mix of 29,594 params


def test_search_with_palette_naming_the_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--palette` names them, and the default (fast Fisher) scorer scores networks made of them."""
    out = tmp_path / "run"
    assert main(["search", "--budget", "30k", "--samples", "3", "--model", "wrn-10-1", "--batch-size", "8",
                 "--palette", "MBConv6,DARTS", "--workers", "1", "--quiet", "--out", str(out)]) == 0
    best = json.loads((out / "best.json").read_text())
    assert best["blocks"] == ["MBConv6", "DARTS", "MBConv6"]
    assert json.loads((out / "search.json").read_text())["palette"] == ["MBConv6", "DARTS"]


@pytest.mark.parametrize("post", [False, True], ids=["pre", "post"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_forward_and_backward_at_stride_1_and_2(name: str, stride: int, post: bool) -> None:
    torch.manual_seed(0)
    body = bs.block_type(name).build(16, 32, stride, post).train()
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    before = x.detach().clone()
    out = body(x)
    assert out.shape == (2, 32, 8 // stride, 8 // stride)
    assert torch.equal(x.detach(), before), "the body must not change its input: the shortcut reads it too"
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in body.parameters())


def test_mbconv6_is_mobilenet_v2s_inverted_residual() -> None:
    convs = bs.block_type("MBConv6").convs(32, 64, 2)
    assert [(c.c_in, c.c_out, c.kernel, c.stride, c.groups) for c in convs] == [
        (32, 192, 1, 1, 1), (192, 192, 3, 2, 192), (192, 64, 1, 1, 1)]
    body = bs.block_type("MBConv6").build(32, 64, 2, post_activation=False)
    assert [type(m).__name__ for m in body] == ["Conv2d", "BatchNorm2d", "ReLU"] * 2 + ["Conv2d", "BatchNorm2d"]


def test_darts_cells_follow_the_darts_v2_genotype() -> None:
    normal, reduce = DARTS_V2
    assert [op for op, _ in normal.ops].count("sep_conv_3x3") == 5 and normal.concat == reduce.concat == (2, 3, 4, 5)
    cell = bs.block_type("DARTS").build(64, 128, 1)[0]
    dilated = [m for m in cell.modules() if isinstance(m, nn.Conv2d) and m.dilation == (2, 2)]
    assert len(dilated) == 1 and dilated[0].groups == 32  # C = C_out / 4 = 32
    assert sum(isinstance(m, nn.Identity) for m in cell.ops) == 2
    reduction = bs.block_type("DARTS").build(64, 128, 2)[0]
    assert sum(isinstance(m, nn.MaxPool2d) for m in reduction.ops) == 5
    assert n_params(reduction) == 2 * (64 * 32 + 2 * 32)  # only the two preprocessing ReLU-Conv1x1-BNs
    assert not bs.block_type("DARTS").is_valid(16, 18, 1)  # 18 channels are not 4 concatenated nodes
    with pytest.raises(ValueError, match="not supported"):
        CellSpec((("conv_7x1_1x7", 0), ("skip_connect", 1)), (2,))
    with pytest.raises(ValueError, match="not computed before"):
        CellSpec((("skip_connect", 2), ("skip_connect", 1)), (2,))


def _example(genotype: bs.Genotype, batch: int, seed: int) -> torch.Tensor:
    b = genotype.backbone
    return torch.randn(batch, b.in_channels, b.input_size, b.input_size, generator=torch.Generator().manual_seed(seed))


def _trained_looking(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so a BN an export mishandles shows in the logits."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, low, high in ((m.weight, 0.5, 1.5), (m.bias, -0.2, 0.2), (m.running_mean, -0.2, 0.2),
                                     (m.running_var, 0.5, 1.5)):
                    t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)
    return net.eval()


POST = bs.Backbone("post-small", (1, 1, 1), (32, 64, 128), (1, 2, 2), post_activation=True, stem_channels=16,
                   input_size=16)


@pytest.mark.parametrize("backbone", [bs.get_backbone("wrn-10-2"), POST], ids=["wrn-10-2", "post-activation"])
@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_onnx_export_matches_pytorch_in_onnxruntime(name: str, backbone: bs.Backbone, tmp_path: Path) -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    import onnxruntime

    from blockswap.deploy.export import export_network

    genotype = bs.Genotype.uniform(backbone, name).validate()
    torch.manual_seed(0)
    net = _trained_looking(genotype.build())
    out = tmp_path / f"{name}.onnx"
    report = export_network(net, _example(genotype, 2, 1), "onnx", out, check_batch=3)
    assert report.max_abs_diff <= 1e-4 and report.blocks == [name] * 3
    x = _example(genotype, 4, 7)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    with torch.no_grad():
        expected = net(x)
    assert got.shape == expected.shape and (got - expected).abs().max().item() <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_torchscript_trace_matches_pytorch(name: str, tmp_path: Path) -> None:
    from blockswap.deploy.export import export_network

    genotype = bs.Genotype.uniform(POST, name).validate()
    torch.manual_seed(0)
    net = _trained_looking(genotype.build())
    out = tmp_path / f"{name}.pt"
    assert export_network(net, _example(genotype, 2, 1), "torchscript", out, check_batch=3).max_abs_diff <= 1e-4
    x = _example(genotype, 4, 7)
    with torch.no_grad():
        assert (torch.jit.load(str(out))(x) - net(x)).abs().max().item() <= 1e-4


def test_plot_draws_each_blocks_body_params_and_the_stage_boundaries(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    wrn = bs.get_backbone("wrn-16-2")
    genotype = bs.Genotype(wrn, ("Conv", "G4B2", "DConv", "MBConv6", "DARTS", "ConvB2")).validate()
    path = tmp_path / "g.png"
    drawn = plot_genotype(genotype, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shapes = wrn.block_shapes()
    per_block = [bs.block_type(n).params(s.c_in, s.c_out, s.stride) for n, s in zip(genotype.blocks, shapes)]
    assert list(drawn.heights) == per_block and drawn.blocks == genotype.blocks
    assert drawn.boundaries == (1.5, 3.5)  # wrn-16-2: two blocks per stage
    assert drawn.families == ("S", "B", "G", "baseline", "baseline", "B")
    assert drawn.title.startswith("wrn-16-2") and f"{format_count(genotype.params())} params" in drawn.title
    resnet = bs.Genotype.uniform(bs.get_backbone("resnet34"), "G4B2")
    assert plot_genotype(resnet, tmp_path / "r.png").boundaries == (2.5, 6.5, 12.5)


def test_info_plot_writes_the_png_and_refuses_without_matplotlib(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    genotype = bs.Genotype.uniform(bs.get_backbone("wrn-10-2"), "DARTS")
    genotype.save(tmp_path / "g.json")
    assert main(["info", str(tmp_path / "g.json"), "--plot", str(tmp_path / "g.png"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plot"] == str(tmp_path / "g.png") and (tmp_path / "g.png").stat().st_size > 0
    assert data["params"] == genotype.params()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(BlockSwapError, match=r"pip install 'blockswap\[study\]'"):
        plot_genotype(genotype, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
