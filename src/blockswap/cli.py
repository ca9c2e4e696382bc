"""The `blockswap` command line: fills the library's config dataclasses from argv.

Nothing imports this module; bad input ends with a one-line reason and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from .blocks import DEFAULT_PALETTE as palette
from .budget import format_count, parse_budget
from .errors import BlockSwapError
from .genotype import Genotype, load_genotype
from .networks import Backbone
from .scoring import SCORERS
from .search import SearchConfig, run_search

__all__ = ["main", "build_parser"]


def _budget(text: str) -> int:
    try:
        return parse_budget(text)
    except BlockSwapError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _device(text: str | None) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise BlockSwapError(f"invalid device {text!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BlockSwapError(f"device {text!r} requested but CUDA is not available")
    return device


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="sample budget-feasible students and rank them by Fisher potential",
                       description="Sample --samples genotypes within the budget window, score each by Fisher "
                       "potential on one seeded minibatch, write candidates.csv and best.json to --out.")
    p.add_argument("--budget", required=True, type=_budget, help="parameter budget, e.g. 400k, 1.6M, 400000")
    p.add_argument("--samples", type=_positive_int, default=1000, help="candidates to score (default 1000)")
    p.add_argument("--model", default="wrn-40-2", help="teacher network: wrn-D-K or resnet18/34 (default wrn-40-2)")
    p.add_argument("--data-dir", default=None,
                   help="CIFAR-10 folder (downloaded there if missing); default: the embedded 1,000-image sample")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="probe minibatch size (default 128)")
    p.add_argument("--tolerance", type=float, default=0.025, help="budget window, fraction (default 0.025)")
    p.add_argument("--seed", type=int, default=0, help="fixes candidates, weights and the probe batch (default 0)")
    p.add_argument("--scorer", choices=sorted(SCORERS), default="fast",
                   help="fast (default) or reference: the plain fp32 scorer the fast one is checked against")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="scoring processes per rank (default: one single-threaded process per core on CPU, 1 on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--out", required=True, type=Path, help="output folder; rerun with the same one to resume")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)


def _default_workers(device: torch.device) -> int:
    """One single-threaded scoring process per core torch would use here; one on CUDA."""
    return 1 if device.type == "cuda" else max(1, torch.get_num_threads())


@contextmanager
def _torchrun_group(device: torch.device) -> Iterator[tuple[dist.ProcessGroup | None, torch.device]]:
    """Under torchrun (WORLD_SIZE > 1), the default process group (gloo on CPU, nccl on CUDA) and this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None, device
        return
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.group.WORLD, device
    finally:
        dist.destroy_process_group()


def _cmd_search(args: argparse.Namespace) -> int:
    config = SearchConfig(budget=args.budget, model=args.model, samples=args.samples, batch_size=args.batch_size,
                          tolerance=args.tolerance, seed=args.seed, data_dir=args.data_dir, scorer=args.scorer)
    with _torchrun_group(_device(args.device)) as (group, device):
        lead = group is None or dist.get_rank(group) == 0
        workers = args.workers or _default_workers(device)
        result = run_search(config, args.out, device=device, progress=lead and not args.quiet, workers=workers,
                            group=group)
    if not lead:
        return 0
    best = result.best
    print(f"scored {result.scored_now} new of {len(result.candidates)} candidates in {result.seconds:.1f} s "
          f"({config.model}, budget {format_count(config.budget)})")
    print(f"best: #{best.index}  params {best.params:,}  MACs {format_count(best.macs)}  fisher {best.fisher:.6g}")
    print(f"      {' '.join(best.genotype.blocks)}")
    print(f"wrote {result.out_dir / 'candidates.csv'} and {result.out_dir / 'best.json'}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, MACs and per-block table of a genotype",
                       description="GENOTYPE is a genotype JSON, a published-format CSV, or a model name "
                       "(wrn-40-2, resnet34, ...) for its all-Conv teacher.")
    p.add_argument("genotype", help="genotype file (.json or .csv) or model name")
    p.add_argument("--model", default=None, help="backbone for a CSV genotype (default wrn-40-2)")
    p.add_argument("--row", type=int, default=0, help="data row of a multi-row CSV (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)


def _resolve_genotype(text: str, model: str | None, row: int) -> Genotype:
    path = Path(text)
    backbone = Backbone.from_name(model) if model else None
    if path.suffix.lower() in (".json", ".csv") or path.exists():
        return load_genotype(path, backbone=backbone, row=row)
    try:
        return Genotype.uniform(Backbone.from_name(text))
    except ValueError:
        raise BlockSwapError(f"{text!r} is neither a genotype file nor a model name") from None


def _cmd_info(args: argparse.Namespace) -> int:
    g = _resolve_genotype(args.genotype, args.model, args.row)
    post = g.backbone.post_activation
    rows = []
    for i, (name, shape, stage) in enumerate(zip(g.blocks, g.backbone.block_shapes(), g.backbone.block_stages())):
        t = palette[name]
        rows.append({"index": i, "stage": stage, "type": name, "c_in": shape.c_in, "c_out": shape.c_out,
                     "stride": shape.stride, "body_params": t.params(shape.c_in, shape.c_out, shape.stride, post),
                     "body_macs": t.macs(shape.c_in, shape.c_out, shape.stride, shape.size_in)})
    if args.json:
        print(json.dumps({"model": g.backbone.name, **g.to_dict(), "params": g.params(), "macs": g.macs(),
                          "per_block": rows}))
        return 0
    print(f"{g.backbone.name}, {g.backbone.num_classes} classes, input {g.backbone.input_size}x{g.backbone.input_size}")
    print(f"{'#':>3} {'stage':>5} {'type':<9} {'channels':>11} {'s':>2} {'body params':>12} {'body MACs':>12}")
    for r in rows:
        ch = f"{r['c_in']}->{r['c_out']}"
        print(f"{r['index']:>3} {r['stage']:>5} {r['type']:<9} {ch:>11} {r['stride']:>2} "
              f"{r['body_params']:>12,} {r['body_macs']:>12,}")
    print(f"params {g.params():,} ({format_count(g.params())})   MACs {g.macs():,} ({format_count(g.macs())})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blockswap", description="Fisher-guided block substitution (BlockSwap).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_search(sub)
    _add_info(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BlockSwapError as e:
        print(f"blockswap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blockswap: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
