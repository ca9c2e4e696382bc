"""Registries: a user's backbone, block type and scorer work wherever the published ones do (issue 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import blockswap as bs
from blockswap.space import backbones
from blockswap.util.errors import BlockSwapError
from blockswap.util.plugins import load_plugin, loaded_plugins
from blockswap.util.registry import Registry

REPO = Path(__file__).resolve().parents[1]

PLUGIN = textwrap.dedent('''
    """A user's plugin: one block type and one scorer, registered on import."""
    import blockswap as bs


    def conv3x1_chain(c_in, c_out, stride):
        return [bs.ConvSpec(c_in, c_out, 3, stride), bs.ConvSpec(c_out, c_out, 1)]


    bs.register_block_type(bs.BlockType("Conv3x1", "user", conv3x1_chain))


    @bs.register_scorer("body-norm")
    class BodyNorm:
        """Sum over a block body's weights of |w| ** power: a data-free proxy."""

        name = "body-norm"

        def __init__(self, power=2):
            self.power = power

        def __call__(self, model, batch):
            per_block = tuple(
                float(sum(p.detach().abs().pow(self.power).sum() for m in block.body_modules() for p in m.parameters()))
                for block in model.blocks
            )
            return bs.Score(sum(per_block), per_block)
''')


def _blockswap(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "blockswap", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_user_block_type_and_scorer_through_every_command(tmp_path: Path, cifar_root: Path,
                                                          tiny_teacher: Path) -> None:
    (tmp_path / "my_blocks.py").write_text(PLUGIN)
    plugin = ["--plugin", str(tmp_path / "my_blocks.py")]
    search = [*plugin, "search", "--model", "wrn-10-1", "--budget", "34842", "--tolerance", "0.02",
              "--palette", "Conv3x1,DConv", "--samples", "3", "--batch-size", "16", "--workers", "2", "--quiet"]

    _ok(_blockswap(*search, "--scorer", "body-norm", "--scorer-setting", "power=1", "--out", "s", cwd=tmp_path))
    recorded = json.loads((tmp_path / "s" / "search.json").read_text())
    assert recorded["scorer"] == "body-norm" and recorded["scorer_settings"] == {"power": 1}
    assert recorded["palette"] == ["Conv3x1", "DConv"]
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    assert best["blocks"] == ["Conv3x1"] * 3 and best["scorer"] == "body-norm"  # the window admits only this one
    header = (tmp_path / "s" / "candidates.csv").read_text().splitlines()[0]
    assert header == "index,genotype,params,macs,score,score_per_block,screen_score,screen_score_per_block,latency_ms"

    refused = _blockswap(*search, "--scorer", "fast", "--out", "s", cwd=tmp_path)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "scorer: 'body-norm' -> 'fast'" in refused.stderr

    info = _ok(_blockswap(*plugin, "info", "s/best.json", cwd=tmp_path))
    assert "Conv3x1" in info and f"params {best['params']:,}" in info
    without = _blockswap("info", "s/best.json", cwd=tmp_path)
    assert without.returncode == 2 and "unknown block type 'Conv3x1'" in without.stderr
    assert len(without.stderr.strip().splitlines()) == 1

    student = [*plugin, "train", "student", "--genotype", "s/best.json", "--teacher", str(tiny_teacher / "last.pt"),
               "--data-dir", str(cifar_root), "--epochs", "1", "--batch-size", "32", "--train-subset", "64",
               "--test-subset", "50", "--precision", "fp32", "--quiet", "--out", "r"]
    _ok(_blockswap(*student, cwd=tmp_path))
    final = json.loads((tmp_path / "r" / "final.json").read_text())
    assert final["blocks"] == ["Conv3x1"] * 3 and final["params"] == best["params"]
    _ok(_blockswap(*student, "--resume", cwd=tmp_path))  # reloads the checkpoint: the user type rebuilds
    assert json.loads((tmp_path / "r" / "final.json").read_text())["test_error_pct"] == final["test_error_pct"]

    report = json.loads(_ok(_blockswap(*plugin, "eval", "--checkpoint", "r/last.pt", "--data-dir", str(cifar_root),
                                       "--test-subset", "50", "--min-time", "0.01", "--precision", "fp32",
                                       cwd=tmp_path)))
    assert report["blocks"] == ["Conv3x1"] * 3 and report["test_error_pct"] == final["test_error_pct"]


def test_a_loaded_plugin_is_recorded_once_by_its_full_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes import the recorded plugins, wherever they start: a file is recorded by its full path."""
    (tmp_path / "recorded_plugin.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        load_plugin("recorded_plugin.py")
    assert loaded_plugins().count(str((tmp_path / "recorded_plugin.py").resolve())) == 1
    assert "recorded_plugin.py" not in loaded_plugins()
    with pytest.raises(BlockSwapError, match="plugin file not found"):
        load_plugin("missing_plugin.py")
    assert not [spec for spec in loaded_plugins() if spec.endswith("missing_plugin.py")]


def test_duplicate_registrations_follow_one_rule() -> None:
    """In all three registries the same entry again is a no-op (a plugin imported twice) and another is refused."""
    with pytest.raises(BlockSwapError, match="a different scorer named 'fast' is already registered"):
        bs.register_scorer("fast")(bs.FisherScorer)
    with pytest.raises(BlockSwapError, match="already registered"):
        bs.register_scorer("fast", log_average=False)(bs.FastFisherScorer)  # the same factory, another declaration
    bs.register_scorer("fast", sums_blocks=True)(bs.FastFisherScorer)
    assert bs.scorer_info("fast") == bs.ScorerInfo(sums_blocks=True)
    with pytest.raises(BlockSwapError, match="a different block type named 'Conv' is already registered"):
        bs.register_block_type(bs.BlockType("Conv", "S", lambda a, b, s: [bs.ConvSpec(a, b, 5, s)]))
    bs.register_block_type(bs.block_type("Conv"))
    with pytest.raises(BlockSwapError, match="a different model named 'wrn-{depth}-{width}' is already registered"):
        bs.register_backbone("wrn-{depth}-{width}")(lambda depth, width: bs.get_backbone("wrn-16-1"))
    wrn = next(e.factory for e in backbones._REGISTRY.values() if e.template == "wrn-{depth}-{width}")
    bs.register_backbone("wrn-{depth}-{width}", "WideResNet, depth 6n+4, e.g. wrn-40-2, wrn-16-1")(wrn)
    assert bs.get_backbone("wrn-16-1").num_blocks == 6


@pytest.mark.parametrize("register", [
    lambda name: bs.register_scorer(name),
    lambda name: bs.register_block_type(bs.BlockType(name, "user", lambda a, b, s: [bs.ConvSpec(a, b, 3, s)])),
    lambda name: bs.register_backbone(name),
])
@pytest.mark.parametrize("name", ["", "two words", "a/b", 7])
def test_one_name_rule_for_every_registry(register, name: object) -> None:
    with pytest.raises(BlockSwapError, match="may hold"):
        register(name)


def test_registry_lists_choices_and_copies_independently() -> None:
    table: Registry[int] = Registry("widget", "plugins may add more")
    table.add("a", 1)
    table.add("b", 2, help="the second")
    assert table["b"] == 2 and "a" in table and "c" not in table and ["x"] not in table and table.get("c") is None
    with pytest.raises(BlockSwapError, match=r"^unknown widget 'c'; valid choices: a, b \(the second\) "
                                             r"\(plugins may add more\)$"):
        table["c"]
    copy = table.copy()
    copy.add("c", 3)
    assert list(copy) == ["a", "b", "c"] and list(table) == ["a", "b"]
    templates: Registry[int] = Registry("model", templates=True)
    templates.add("net-{depth}", 1)
    for bad in ("Net-{depth}", "net-{Depth}", "net {depth}"):
        with pytest.raises(BlockSwapError, match="lower-case"):
            templates.add(bad, 1)


def test_a_one_argument_plugin_scorer_gets_the_documented_defaults() -> None:
    class Plain:
        def __call__(self, model, batch):  # type: ignore[no-untyped-def]
            return bs.Score(1.0, ())

    if "test-plain" not in bs.scorer_names():
        bs.register_scorer("test-plain")(Plain)
    assert bs.scorer_info("test-plain") == bs.ScorerInfo(log_average=True, needs_weights=True, needs_data=True)
    assert bs.scorer_info(bs.make_scorer("test-plain")) == bs.scorer_info("test-plain")


def test_make_scorer_names_choices_and_bad_settings() -> None:
    with pytest.raises(BlockSwapError, match="unknown scorer 'magic'; valid choices: reference, fast"):
        bs.make_scorer("magic")
    with pytest.raises(BlockSwapError, match="does not take settings"):
        bs.make_scorer("fast", {"no_such_setting": 1})
    assert bs.make_scorer("fast", {"channels_last": False}).channels_last is False


def test_registered_backbone_template_resolves_searches_and_counts() -> None:
    @bs.register_backbone("thin-wrn-{depth}")
    def thin(depth: int) -> bs.Backbone:
        return replace(bs.get_backbone(f"wrn-{depth}-1"), stage_widths=(8, 16, 32))

    backbone = bs.get_backbone("thin-wrn-16", num_classes=5)
    assert backbone.name == "thin-wrn-16" and backbone.num_classes == 5 and backbone.stage_widths == (8, 16, 32)
    teacher = bs.Genotype.uniform(backbone)
    net = teacher.build()
    assert teacher.params() == sum(p.numel() for p in net.parameters())
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert bs.Genotype.from_dict(teacher.to_dict()) == teacher
    students = bs.sample_genotypes(backbone, teacher.params() // 2, 3, seed=0)
    assert all(abs(g.params() - teacher.params() // 2) < 0.025 * teacher.params() // 2 for g in students)
    with pytest.raises(BlockSwapError, match="unknown model 'vgg'; valid choices: wrn-{depth}-{width}"):
        bs.get_backbone("vgg")


def test_palette_with_an_unregistered_type_is_refused() -> None:
    rogue = bs.BlockType("NotRegistered", "user", lambda a, b, s: [bs.ConvSpec(a, b, 3, s)])
    palette = bs.DEFAULT_PALETTE.with_types(rogue)
    with pytest.raises(BlockSwapError, match="unknown block type 'NotRegistered'"):
        bs.sample_genotypes(bs.get_backbone("wrn-16-1"), 100_000, 2, palette=palette)


def test_fixed_costs_equal_torch_flop_counter() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    for name in ("wrn-16-2", "resnet18"):
        backbone = bs.get_backbone(name)
        net = bs.Genotype.uniform(backbone).build().eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.zeros(1, 3, backbone.input_size, backbone.input_size))
        body_macs = sum(bs.block_type("Conv").macs(s.c_in, s.c_out, s.stride, s.size_in)
                        for s in backbone.block_shapes())
        assert bs.fixed_costs(backbone).macs == counter.get_total_flops() // 2 - body_macs
