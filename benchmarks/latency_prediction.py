"""How well a latency table predicts whole networks, beside how well a network's timing predicts itself.

    python3 benchmarks/latency_prediction.py --model wrn-40-2 --students 8 --repeats 3 --json

Measures the block latency table of the current device (no cache), then times
the teacher and `--students` students with uniformly drawn types whole
(`blockswap.space.latency.check_latency_table`), `--repeats` times. Prints JSON:

| key | what it is |
|---|---|
| `table_seconds` | time to measure the table |
| `error_pct` | per repeat, per network: (predicted - measured) / measured, in percent |
| `mean_abs_error_pct` | mean of abs(error_pct) over every repeat and network |
| `bias_pct` | mean of error_pct: negative when the table's sum underestimates whole networks |
| `repeat_spread_pct` | mean over networks of (max - min) / median of its timings across repeats: the noise floor |

A prediction error no larger than `repeat_spread_pct` is as good as the machine lets any table be.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import blockswap as bs
from blockswap.space.latency import DEFAULT_MIN_TIME, check_latency_table, device_name, measure_latency_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn-40-2")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--students", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=DEFAULT_MIN_TIME)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args()
    device = torch.device(args.device)
    backbone = bs.get_backbone(args.model)
    start = time.perf_counter()
    table = measure_latency_table(backbone, bs.PALETTE_NAMES, device, args.batch_size, args.threads, args.min_time,
                                  progress=not args.json)
    table_seconds = time.perf_counter() - start
    genotypes = [bs.Genotype.uniform(backbone), *bs.uniform_genotypes(backbone, args.students, seed=0)]
    repeats = [check_latency_table(table, genotypes, device, 5 * args.min_time, progress=not args.json)
               for _ in range(args.repeats)]
    errors = np.array([[c.error_pct for c in checks] for checks in repeats])
    measured = np.array([[c.measured_ms for c in checks] for checks in repeats])
    spread = (measured.max(0) - measured.min(0)) / np.median(measured, 0)
    print(json.dumps({
        "model": args.model, "device": str(device), "device_name": device_name(device),
        "batch_size": args.batch_size, "threads": args.threads, "min_time_s": args.min_time,
        "table_seconds": round(table_seconds, 1),
        "predicted_ms": [round(c.predicted_ms, 3) for c in repeats[0]],
        "measured_ms": measured.round(3).tolist(),
        "error_pct": errors.round(1).tolist(),
        "mean_abs_error_pct": round(float(np.abs(errors).mean()), 1),
        "bias_pct": round(float(errors.mean()), 1),
        "repeat_spread_pct": round(100 * float(spread.mean()), 1),
    }, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
