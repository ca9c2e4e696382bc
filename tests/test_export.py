"""Export: every block type's ONNX student matches PyTorch in onnxruntime; TorchScript round trips; the CLI."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from blockswap.cli import build_parser, main
from blockswap.deploy.export import export_checkpoint, export_network
from blockswap.space.backbones import Backbone, get_backbone
from blockswap.space.blocks import PALETTE_NAMES
from blockswap.space.genotype import Genotype
from blockswap.space.networks import BlockNetwork
from blockswap.util.errors import BlockSwapError
from blockswap.weights.checkpoint import save_atomic
from blockswap.weights.teachers import load_network

# torch marks TorchScript deprecated; exporting to it is what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")

TOLERANCE = 1e-4
# wrn-10-2 (3 slots: 16->32, 32->64 stride 2, 64->128 stride 2) is the smallest registered WRN at which every
# published type builds in every slot: at width 1, A16B2, G16B2 and G8B4 do not divide the 16-channel stage.
SMALL = get_backbone("wrn-10-2")
# 24 post-activation slots, at every one of which every type builds: one network holds all 23 types.
ALL_TYPES = Genotype(Backbone("all-types", (8, 8, 8), (32, 64, 128), (1, 2, 2), post_activation=True,
                              stem_channels=16, input_size=16), PALETTE_NAMES + ("Conv",)).validate()
LINE = re.compile(r"wrote (?P<out>\S+) \((?P<bytes>[\d,]+) bytes, (?P<format>onnx|torchscript)\) in [\d.]+ s; "
                  r"max \|(?P<runtime>onnxruntime|torchscript) - torch\| = (?P<diff>\S+) "
                  r"\(tolerance (?P<tolerance>\S+)\) at batch (?P<batch>\d+)")


def needs_onnx() -> None:
    """Skip where the export extra (onnx, onnxscript, onnxruntime) is not installed."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)


@pytest.fixture(params=["torchscript", "onnx"])
def fmt(request: pytest.FixtureRequest) -> str:
    """Each export format; onnx where its packages are installed."""
    if request.param == "onnx":
        needs_onnx()
    return request.param


def trained_looking(net: BlockNetwork, seed: int = 0) -> BlockNetwork:
    """Random non-zero BN statistics and affine terms, and a head bias, so a BN mishandled by an export shows."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(t: Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                uniform(m.weight, 0.5, 1.5)
                uniform(m.bias, -0.2, 0.2)
                uniform(m.running_mean, -0.2, 0.2)
                uniform(m.running_var, 0.5, 1.5)
            elif isinstance(m, nn.Linear):
                uniform(m.bias, -0.5, 0.5)
    return net.eval()


def images(genotype: Genotype, batch: int, seed: int = 7) -> Tensor:
    b = genotype.backbone
    return torch.randn(batch, b.in_channels, b.input_size, b.input_size, generator=torch.Generator().manual_seed(seed))


def torch_logits(net: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return net.eval()(x)


def onnx_logits(path: Path, x: Tensor) -> Tensor:
    """The file run in onnxruntime by the names the export promises, independently of blockswap.deploy.export."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert isinstance(session.get_inputs()[0].shape[0], str), "the batch axis is symbolic"
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def script_logits(path: Path, x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.jit.load(str(path))(x)


def file_logits(fmt: str, path: Path, x: Tensor) -> Tensor:
    """The written file's logits, from its own runtime."""
    return onnx_logits(path, x) if fmt == "onnx" else script_logits(path, x)


def assert_close(got: Tensor, expected: Tensor) -> None:
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE


def only_file(folder: Path) -> Path:
    """The one file in `folder`: an atomic write leaves no temporary beside it."""
    files = list(folder.iterdir())
    assert len(files) == 1, files
    return files[0]


@pytest.mark.parametrize("block", PALETTE_NAMES)
def test_every_block_type_exported_to_onnx_matches_pytorch_in_onnxruntime(block: str, tmp_path: Path) -> None:
    needs_onnx()
    genotype = Genotype.uniform(SMALL, block).validate()
    torch.manual_seed(0)
    net = trained_looking(genotype.build())
    out = tmp_path / f"{block}.onnx"
    report = export_network(net, images(genotype, 2, seed=1), "onnx", out, check_batch=5)
    assert report.max_abs_diff <= TOLERANCE
    assert (report.model, report.blocks, report.input_shape) == ("wrn-10-2", [block] * 3, [3, 32, 32])
    assert (report.example_batch, report.checked_batch, report.bytes) == (2, 5, out.stat().st_size)
    assert only_file(tmp_path) == out
    x = images(genotype, 3)
    assert_close(onnx_logits(out, x), torch_logits(net, x))


def test_one_post_activation_network_holding_all_23_types_traces_to_torchscript(tmp_path: Path) -> None:
    """One trace covers every type (its ONNX export alone would cost ~17 s; the types are exported one by one above)."""
    torch.manual_seed(0)
    net = trained_looking(ALL_TYPES.build(), seed=1)
    out = tmp_path / "all.pt"
    report = export_network(net, images(ALL_TYPES, 2, seed=1), "torchscript", out, check_batch=4)
    assert report.max_abs_diff <= TOLERANCE and report.blocks == list(ALL_TYPES.blocks)
    x = images(ALL_TYPES, 3)
    assert_close(script_logits(out, x), torch_logits(net, x))


def test_a_bare_resnet_state_dict_exports_both_ways(fmt: str, tmp_path: Path) -> None:
    """A BasicBlock ResNet's weights alone (torchvision keys, CIFAR stem) are read as their layout and exported."""
    genotype = Genotype.uniform(Backbone("cifar-resnet", (1, 2, 1), (16, 32, 64), (1, 2, 2), post_activation=True,
                                         stem_channels=16))
    torch.manual_seed(0)
    net = trained_looking(genotype.build(), seed=2)
    weights = tmp_path / "my_resnet.pth"
    torch.save(net.state_dict(), weights)
    out = tmp_path / "export" / f"my_resnet.{fmt}"
    report = export_checkpoint(weights, fmt, out, batch_size=3)
    assert (report.checkpoint, report.format, report.out) == (str(weights), fmt, str(out))
    assert (report.model, report.blocks, report.input_shape, report.checked_batch) == (
        "my_resnet", ["Conv"] * 4, [3, 32, 32], 3)
    assert report.max_abs_diff <= TOLERANCE and report.to_dict()["max_abs_diff"] == report.max_abs_diff
    x = images(genotype, 2)
    assert_close(file_logits(fmt, out, x), torch_logits(net, x))


def test_training_mode_is_restored_and_the_export_is_in_eval_mode(tmp_path: Path) -> None:
    """BN in training mode would use batch statistics; the file must hold the running ones."""
    genotype = Genotype(SMALL, ("G4B2", "DConv", "ConvB2"))
    torch.manual_seed(0)
    net = trained_looking(genotype.build()).train()
    out = tmp_path / "net.pt"
    report = export_network(net, images(genotype, 2), "torchscript", out, check_batch=3)
    assert net.training and report.max_abs_diff <= TOLERANCE
    x = images(genotype, 4)
    assert_close(script_logits(out, x), torch_logits(net, x))


def test_export_network_refusals(tmp_path: Path) -> None:
    genotype = Genotype.uniform(SMALL, "Conv")
    net = genotype.build()
    x = images(genotype, 2)
    with pytest.raises(BlockSwapError, match="must differ from the example input's batch"):
        export_network(net, x, "torchscript", tmp_path / "a.pt", check_batch=2)
    with pytest.raises(BlockSwapError, match="unknown export format 'tflite'"):
        export_network(net, x, "tflite", tmp_path / "a.tflite", check_batch=3)
    with pytest.raises(BlockSwapError, match="tolerance must be a finite number >= 0"):
        export_network(net, x, "torchscript", tmp_path / "a.pt", check_batch=3, tolerance=float("nan"))
    with pytest.raises(BlockSwapError, match="is a folder"):
        export_network(net, x, "torchscript", tmp_path, check_batch=3)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    genotype = Genotype.uniform(SMALL, "Conv")
    out = tmp_path / "net.pt"
    out.write_bytes(b"old")

    def killed_while_saving(module: Any, f: Any) -> None:
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.jit, "save", killed_while_saving)
    with pytest.raises(KeyboardInterrupt):
        export_network(genotype.build(), images(genotype, 2), "torchscript", out, check_batch=3, force=True)
    assert out.read_bytes() == b"old" and only_file(tmp_path) == out


def test_export_never_writes_over_the_weights_it_reads_or_an_existing_file(tmp_path: Path) -> None:
    path, _ = student_checkpoint(tmp_path)
    weights = path.read_bytes()
    for force in (False, True):
        with pytest.raises(BlockSwapError, match="is the weight file being exported"):
            export_checkpoint(path, "torchscript", tmp_path / "." / "best.pt", force=force)
    other_run = tmp_path / "other-run"
    other_run.mkdir()
    (other_run / "best.pt").write_bytes(b"another run's weights")
    with pytest.raises(BlockSwapError, match="exists; name a new file, or pass --force to replace it"):
        export_checkpoint(path, "torchscript", other_run / "best.pt")
    assert path.read_bytes() == weights and (other_run / "best.pt").read_bytes() == b"another run's weights"
    with pytest.raises(BlockSwapError, match="--out is empty"):
        export_checkpoint(path, "torchscript", "")
    export_checkpoint(path, "torchscript", other_run / "best.pt", force=True)  # told to: replaced
    assert torch.jit.load(str(other_run / "best.pt")) is not None


def student_checkpoint(tmp_path: Path) -> tuple[Path, Genotype]:
    genotype = Genotype(SMALL, ("G4B2", "DConvA4", "ConvB2"))
    torch.manual_seed(0)
    net = trained_looking(genotype.build())
    path = tmp_path / "best.pt"
    save_atomic({"genotype": genotype.to_dict(), "state_dict": net.state_dict()}, path)
    return path, genotype


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blockswap: error: "), lines
    return lines[0]


def test_cli_exports_a_student_and_prints_one_line(fmt: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, genotype = student_checkpoint(tmp_path)
    out = tmp_path / "deploy" / f"student.{fmt}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out),
                 "--batch-size", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    match = LINE.fullmatch(lines[0])
    assert match, lines[0]
    assert (match["out"], match["format"], match["tolerance"], match["batch"]) == (str(out), fmt, "1e-04", "3")
    assert match["runtime"] == {"onnx": "onnxruntime", "torchscript": "torchscript"}[fmt]
    assert int(match["bytes"].replace(",", "")) == out.stat().st_size and float(match["diff"]) <= TOLERANCE
    assert only_file(out.parent) == out
    net = load_network(checkpoint)[0]
    for batch in (1, 6):  # neither the export's batch (2) nor the check's (3): the batch axis is dynamic
        x = images(genotype, batch, seed=batch)
        assert_close(file_logits(fmt, out, x), torch_logits(net, x))


def test_cli_parity_failure_exits_2_and_keeps_the_file(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime that computes something else (simulated: its outputs shifted by 0.01) is caught and named."""
    checkpoint, _ = student_checkpoint(tmp_path)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession
        run = session.run
        monkeypatch.setattr(session, "run", lambda self, *args, **kw: [y + 0.01 for y in run(self, *args, **kw)])
    else:
        load = torch.jit.load
        monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: (lambda x: load(*args, **kwargs)(x) + 0.01))
    out = tmp_path / f"student.{fmt}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    runtime = {"onnx": "onnxruntime", "torchscript": "torchscript"}[fmt]
    assert f"{fmt} parity check failed: max |{runtime} - torch| = 1.0e-02 exceeds the tolerance 1e-04" in line
    assert f"the file is kept: {out}" in line and out.stat().st_size > 0


def test_cli_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint, _ = student_checkpoint(tmp_path)
    out = tmp_path / "new" / "student.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--format", "onnx", "--out", str(out)]) == 2
    assert "checkpoint not found" in one_error_line(capsys)
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out),
                 "--tolerance", "-1"]) == 2
    assert "tolerance must be a finite number >= 0, got -1.0" in one_error_line(capsys)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # what `import onnxscript` sees where it is not installed
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "ONNX export needs" in line and "onnxscript" in line and "pip install 'blockswap[export]'" in line
    assert not out.parent.exists()
    with pytest.raises(SystemExit) as e:
        main(["export", "--checkpoint", str(checkpoint), "--format", "tflite", "--out", str(out)])
    assert e.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


def test_cli_defaults_are_the_library_defaults() -> None:
    parser = build_parser()
    export = next(a for a in parser._actions if a.dest == "command").choices["export"]
    defaults = {a.dest: a.default for a in export._actions}
    signature = inspect.signature(export_checkpoint).parameters
    assert defaults["batch_size"] == signature["batch_size"].default
    assert defaults["tolerance"] == signature["tolerance"].default == TOLERANCE
