"""Screened against unscreened search: the same candidates searched both ways in one run, timed.

    python3 benchmarks/screening.py --budget 400k --candidates 200 --json

Both sides are `blockswap.run_search` into fresh folders with the same seed,
so the candidates and their initial weights are the same: the unscreened side
scores each on the whole probe batch (the paper's procedure), the screened side
on its first --screen-batch images, then re-scores the best --rescore-fraction
on the whole batch. Before timing, one small untimed search warms the kernel
caches. Prints full_s, screened_s, speedup (full_s / screened_s), same_pick,
and full_pick_screen_rank: where the unscreened pick stands in the screening
order (1 = screened first). The pick survives the screen whenever that rank is
at most the number re-scored, so the worst rank over many budgets and seeds
says how small a fraction is safe.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from search_speed import candidates_parser, default_data_dir

import blockswap as bs
from blockswap.cli import _positive_int
from blockswap.search.run import DEFAULT_RESCORE_FRACTION, DEFAULT_SCREEN_BATCH, screen_key
from blockswap.util.counts import format_count


def _search(config: bs.SearchConfig, out: Path, workers: int) -> tuple[bs.SearchResult, float]:
    start = time.perf_counter()
    result = bs.run_search(config, out, progress=False, workers=workers)
    return result, time.perf_counter() - start


def benchmark(budget: int, n: int, model: str, seed: int, data_dir: str | None, workers: int, screen_batch: int,
              fraction: float) -> dict[str, object]:
    """Search the same n candidates unscreened and screened; return the figures."""
    common = {"budget": budget, "model": model, "samples": n, "seed": seed, "data_dir": data_dir}
    with tempfile.TemporaryDirectory() as tmp:
        warm = {**common, "samples": max(2, workers), "seed": seed + 1}
        _search(bs.SearchConfig(**warm, screen=False), Path(tmp) / "warm", workers)
        full, full_s = _search(bs.SearchConfig(**common, screen=False), Path(tmp) / "full", workers)
        screened, screened_s = _search(bs.SearchConfig(**common, screen_batch=screen_batch, rescore_fraction=fraction),
                                       Path(tmp) / "screened", workers)
    order = sorted(screened.candidates, key=screen_key)
    rank = 1 + [c.index for c in order].index(full.best.index)
    return {"full_s": full_s, "screened_s": screened_s, "speedup": full_s / screened_s,
            "same_pick": screened.best.index == full.best.index, "full_pick_screen_rank": rank,
            "rescored": screened.scored_now, "candidates": n, "budget": budget, "model": model, "seed": seed,
            "screen_batch": screen_batch, "rescore_fraction": fraction, "workers": workers,
            "torch_threads": torch.get_num_threads(), "data": data_dir}


def main() -> None:
    p = candidates_parser(__doc__.split("\n")[0], candidates=24)
    p.add_argument("--workers", type=_positive_int, default=torch.get_num_threads(),
                   help="scoring processes, as `blockswap search` starts by default (default: cores)")
    p.add_argument("--screen-batch", type=_positive_int, default=DEFAULT_SCREEN_BATCH)
    p.add_argument("--rescore-fraction", type=float, default=DEFAULT_RESCORE_FRACTION)
    args = p.parse_args()
    data_dir = args.data_dir or default_data_dir()
    result = benchmark(args.budget, args.candidates, args.model, args.seed, data_dir, args.workers,
                       args.screen_batch, args.rescore_fraction)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']} at {format_count(args.budget)}, {args.candidates} candidates, data: {result['data']}")
    print(f"unscreened  {result['full_s']:.1f} s")
    print(f"screened    {result['screened_s']:.1f} s  ({result['speedup']:.2f}x, {result['rescored']} re-scored)")
    print(f"same pick: {result['same_pick']}; the unscreened pick is #{result['full_pick_screen_rank']} "
          "in the screening order")


if __name__ == "__main__":
    main()
