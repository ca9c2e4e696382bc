"""Multi-process training on CPU: 2 gloo processes on loopback, as torchrun would start them."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from blockswap import Backbone, Genotype
from blockswap.deploy.evaluate import EvalConfig, evaluate_checkpoint
from blockswap.train.distill import DistillConfig
from blockswap.train.training import TapsModule, TrainConfig, forward_loss, train
from blockswap.util.distributed import setup_distributed
from blockswap.weights.checkpoint import read_checkpoint

WORLD = 2
GLOBAL_BATCH = 8
DISTILL = DistillConfig(beta=1000.0, kd_alpha=0.5)


def _problem() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The same student, teacher and global batch in every process."""
    torch.manual_seed(0)
    backbone = Backbone.from_name("wrn-10-1")
    student, teacher = Genotype.uniform(backbone, "G4B2").build(), Genotype.uniform(backbone).build().eval()
    x, y = torch.randn(GLOBAL_BATCH, 3, 32, 32), torch.randint(0, 10, (GLOBAL_BATCH,))
    return student, teacher, x, y


def _grad_worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)  # two processes share two cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        _save_grads_and_stats(rank, out)
        dist.barrier()  # both ranks are done with every collective before either tears the group down
    finally:
        dist.destroy_process_group()


def _save_grads_and_stats(rank: int, out: str) -> None:
    """One rank's share of the check; the DDP module dies here, before its process group is destroyed."""
    place = setup_distributed(torch.device("cpu"))
    assert (place.rank, place.world, place.owns_group) == (rank, WORLD, False)
    student, teacher, x, y = _problem()
    model = DistributedDataParallel(TapsModule(student))
    model.eval()  # BN on running statistics: per-process batch statistics would differ from the global batch's
    local = GLOBAL_BATCH // WORLD
    part = slice(rank * local, (rank + 1) * local)
    parts, _ = forward_loss(model, teacher, x[part], y[part], DISTILL)
    parts.total.backward()
    torch.save({n: p.grad for n, p in student.named_parameters()}, Path(out) / f"grad{rank}.pt")
    bn = torch.nn.BatchNorm2d(3)
    bn(x[part])  # each process updates its running statistics from its own images
    place.broadcast_buffers(bn)
    torch.save(bn.running_mean, Path(out) / f"bn{rank}.pt")


def test_averaged_gradient_equals_single_process_gradient(tmp_path: Path) -> None:
    mp.spawn(_grad_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    student, teacher, x, y = _problem()
    model = TapsModule(student).eval()
    forward_loss(model, teacher, x, y, DISTILL)[0].total.backward()
    reference = {n: p.grad for n, p in student.named_parameters()}
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"grad{rank}.pt", weights_only=True)
        assert grads.keys() == reference.keys()
        for name, g in reference.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=f"rank {rank} {name}")
    rank0_stats = torch.nn.BatchNorm2d(3)
    rank0_stats(x[: GLOBAL_BATCH // WORLD])
    for rank in range(WORLD):
        assert torch.equal(torch.load(tmp_path / f"bn{rank}.pt", weights_only=True), rank0_stats.running_mean)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_worker(rank: int, port: int, config: TrainConfig, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))

    def keep_params(row: dict, net: torch.nn.Module) -> None:
        torch.save({n: p.detach().clone() for n, p in net.named_parameters()}, Path(out) / f"rank{rank}.pt")

    place = setup_distributed(torch.device("cpu"))  # joins the group the environment describes, as the CLI does
    try:
        train(config, Path(out) / "run", device=place.device, progress=False, on_epoch=keep_params, group=place.group)
    finally:
        place.close()


def test_torchrun_style_training_writes_one_run(cifar_root: Path, tmp_path: Path) -> None:
    genotype = Genotype.uniform(Backbone.from_name("wrn-10-1"), "G4B2")
    config = TrainConfig(genotype=genotype.to_dict(), data_dir=str(cifar_root), epochs=1, batch_size=32,
                         train_subset=128, test_subset=100, precision="fp32")
    mp.spawn(_train_worker, args=(_free_port(), config, str(tmp_path)), nprocs=WORLD, join=True)
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["processes"] == WORLD and final["params"] == genotype.params()
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert row["test_error_pct"] == final["test_error_pct"]
    # the test shards were scored with rank 0's BN statistics, i.e. by the network last.pt holds
    report = evaluate_checkpoint(EvalConfig(checkpoint=tmp_path / "run" / "last.pt", data_dir=cifar_root,
                                            precision="fp32", test_subset=100, min_time=0.01), torch.device("cpu"))
    assert report.test_error_pct == final["test_error_pct"]
    assert report.test_loss == pytest.approx(final["test_loss"], rel=1e-5)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for name in a:
        assert torch.equal(a[name], b[name]), name  # DDP kept the replicas identical
    saved = read_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    assert all(torch.equal(saved[n], a[n]) for n in a)
    assert not list((tmp_path / "run").glob("*.tmp"))


def _corrupt_folder_worker(rank: int, port: int, config: TrainConfig, out: str) -> None:
    """One process of a torchrun-style run that must stop at the header check, writing what it raised."""
    from blockswap.data.imagefolder import DataError

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    place = setup_distributed(torch.device("cpu"))
    try:
        train(config, Path(out) / "run", device=place.device, progress=False, group=place.group, loader_workers=0)
    except DataError as e:
        (Path(out) / f"error{rank}.txt").write_text(str(e))
    finally:
        place.close()


def test_a_corrupt_image_in_one_process_share_stops_every_process(image_folder: Path, tmp_path: Path) -> None:
    """Each process opens only its share of the headers; the one that finds the bad image names it, the other
    stops too instead of waiting at the first step."""
    import shutil

    root = tmp_path / "images"
    shutil.copytree(image_folder, root)
    bad = sorted((root / "val" / "ship").glob("*.jpg"))[-1]
    bad.write_bytes(b"not an image at all")
    config = TrainConfig(genotype=Genotype.uniform(Backbone.from_name("wrn-10-1", 3)).to_dict(), data_dir=str(root),
                         epochs=1, batch_size=16, precision="fp32")
    context = mp.spawn(_corrupt_folder_worker, args=(_free_port(), config, str(tmp_path)), nprocs=WORLD, join=False)
    for _ in range(30):  # a process left waiting on the other would never end: fail instead of hanging
        if context.join(timeout=10):
            break
    else:
        pytest.fail("a process of the run did not stop")
    messages = [(tmp_path / f"error{r}.txt").read_text() for r in range(WORLD)]
    assert sum(f"cannot decode image {bad}" in m for m in messages) == 1
    assert sum(m.startswith("another process found an image it cannot decode") for m in messages) == 1
    assert not (tmp_path / "run").exists()
