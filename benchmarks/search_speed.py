"""Seconds per candidate of the reference and the fast Fisher scorer, and whether they rank alike.

    python3 benchmarks/search_speed.py --budget 400k --candidates 30 [--json]

Scores the same N candidates (same genotypes, same initial weights from
`build_candidate`, same probe batch of real CIFAR-10 images) three ways in one
run, interleaved in chunks so that load from other processes hits each alike:

- reference: `FisherScorer` in this process (how the core searched);
- fast, in process: `FastFisherScorer` in this process (the scorer alone);
- fast: `FastFisherScorer` in a pool of single-threaded worker processes
  (what `blockswap search` does by default); `speedup` is reference / this.

Times include building each candidate. Worker start-up and a warm-up candidate
per worker are not timed (paid once per search). Prints seconds per candidate, speedups and the Spearman
correlation of the reference and fast score lists; `--json` prints one object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

import blockswap as bs
from blockswap.cli import _positive_int
from blockswap.data import probe_images
from blockswap.search.pool import ScoringPool, score_genotype
from blockswap.util.counts import format_count

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO.parent / "shared" / "data" / "cifar10" / "build.py"
CACHE = Path(os.environ.get("BLOCKSWAP_CIFAR_CACHE", Path.home() / ".cache" / "blockswap-tests" / "cifar10"))


def default_data_dir() -> str | None:
    """CIFAR-10 built from ../shared into the test suite's cache (once); None for the embedded sample."""
    if not (CACHE / "cifar-10-batches-py" / "data_batch_5").is_file():
        if not BUILD_SCRIPT.is_file():
            return None
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, str(BUILD_SCRIPT), str(CACHE)], capture_output=True, check=False)
        if done.returncode != 0:
            return None
    return str(CACHE)


def benchmark(budget: int, n: int, model: str, seed: int, data_dir: str | None, workers: int) -> dict[str, object]:
    """Time the three ways of scoring the same n candidates; return the figures."""
    genotypes = bs.sample_genotypes(bs.Backbone.from_name(model), budget, n + workers, seed=seed)
    warm_up = range(n, n + workers)  # extra candidates, untimed: first calls JIT oneDNN kernels per shape
    batch = probe_images(data_dir).probe_batch(128, seed)
    reference, fast = bs.FisherScorer(), bs.FastFisherScorer()
    seconds = {"reference": 0.0, "fast_in_process": 0.0, "fast": 0.0}
    scores: dict[str, dict[int, float]] = {k: {} for k in seconds}
    chunk = 4 * workers  # jobs per timed pool round: enough to keep every worker busy to the end
    with ScoringPool(workers, batch, seed, fast) as pool:
        for _ in pool.score((i, genotypes[i], len(batch[0])) for i in warm_up):
            pass
        for i in warm_up:
            score_genotype(genotypes[i], i, seed, batch, reference)
            score_genotype(genotypes[i], i, seed, batch, fast)
        for lo in range(0, n, chunk):
            idx = range(lo, min(n, lo + chunk))
            for name, scorer in (("reference", reference), ("fast_in_process", fast)):
                t0 = time.perf_counter()
                for i in idx:
                    scores[name][i] = score_genotype(genotypes[i], i, seed, batch, scorer).total
                seconds[name] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for i, score in pool.score((i, genotypes[i], len(batch[0])) for i in idx):
                scores["fast"][i] = score.total
            seconds["fast"] += time.perf_counter() - t0
    ref = [scores["reference"][i] for i in range(n)]
    per = {k: v / n for k, v in seconds.items()}
    return {
        "reference_s_per_candidate": per["reference"],
        "fast_s_per_candidate": per["fast"],
        "speedup": per["reference"] / per["fast"],
        "spearman": float(spearmanr(ref, [scores["fast"][i] for i in range(n)]).statistic),
        "fast_in_process_s_per_candidate": per["fast_in_process"],
        "scorer_speedup": per["reference"] / per["fast_in_process"],
        "spearman_in_process": float(spearmanr(ref, [scores["fast_in_process"][i] for i in range(n)]).statistic),
        "max_rel_diff": max(abs(scores["fast"][i] / ref[i] - 1) for i in range(n)),
        "candidates": n,
        "budget": budget,
        "model": model,
        "workers": workers,
        "torch_threads": torch.get_num_threads(),
        "data": data_dir or "embedded 1,000-image sample",
    }


def candidates_parser(description: str, candidates: int) -> argparse.ArgumentParser:
    """The options every scoring benchmark takes: which candidates, on what data, and --json."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--budget", type=bs.parse_budget, default=bs.parse_budget("400k"), help="default 400k")
    p.add_argument("--candidates", type=_positive_int, default=candidates, help=f"N candidates (default {candidates})")
    p.add_argument("--model", default="wrn-40-2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: built from ../shared into a cache)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main() -> None:
    p = candidates_parser(__doc__.split("\n")[0], candidates=30)
    p.add_argument("--workers", type=_positive_int, default=torch.get_num_threads(),
                   help="fast pool size (default: cores)")
    args = p.parse_args()
    data_dir = args.data_dir or default_data_dir()
    result = benchmark(args.budget, args.candidates, args.model, args.seed, data_dir, args.workers)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']} at {format_count(args.budget)}, {args.candidates} candidates, data: {result['data']}")
    print(f"reference          {result['reference_s_per_candidate']:.3f} s/candidate")
    print(f"fast, in process   {result['fast_in_process_s_per_candidate']:.3f} s/candidate  "
          f"({result['scorer_speedup']:.2f}x, Spearman {result['spearman_in_process']:.4f})")
    print(f"fast, {args.workers} workers    {result['fast_s_per_candidate']:.3f} s/candidate  "
          f"({result['speedup']:.2f}x, Spearman {result['spearman']:.4f})")


if __name__ == "__main__":
    main()
