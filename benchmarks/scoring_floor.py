"""How fast scoring could be on this machine with PyTorch's own convolutions: the conv-only floor.

    python3 benchmarks/scoring_floor.py --budget 400k --candidates 10 [--json]

For the same N candidates as `search_speed.py` (same genotypes, initial weights
and probe batch), runs `FastFisherScorer` once on one thread while recording
every convolution it calls (input shape, weights, and whether the backward pass
needed its input gradient), then times exactly those convolutions alone,
forward and input gradient, each on a warm oneDNN primitive. Their sum is what a
candidate costs one core if batch norm, ReLU, the residual adds, the Fisher sums
and building the network were free. In the same run it times the fast scorer on
one thread and the reference scorer as `search_speed.py` runs it (after an
untimed warm-up candidate, once per candidate, building included, default
threads), and prints:

- `conv_s_per_candidate`: the floor, seconds of one core per candidate;
- `fast_one_thread_s_per_candidate` and `conv_share` (floor / fast);
- `search_1000_floor_s`: 1000 candidates x floor / cores (torch's thread
  count, which `blockswap search` starts one worker per), the shortest
  1000-candidate search these convolutions allow with perfect scaling;
- `speedup_ceiling`: reference seconds per candidate / (floor / cores), the
  largest speedup over the reference they allow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from search_speed import candidates_parser, default_data_dir
from torch import Tensor, nn

import blockswap as bs
from blockswap.data import probe_images
from blockswap.search.pool import build_candidate, score_genotype
from blockswap.util.counts import format_count


@dataclass
class ConvCall:
    """One convolution the scorer ran: its module, its input's shape, and whether its input gradient was needed."""

    conv: nn.Conv2d
    shape: torch.Size
    backward: bool = False


def _replayable(conv: nn.Module) -> nn.Conv2d:
    """`conv` if the replay below times it exactly as it ran: an nn.Conv2d with numeric zero padding."""
    if not isinstance(conv, nn.Conv2d) or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(f"cannot replay {conv}: only nn.Conv2d with numeric zero padding is timed")
    return conv


def record_convs(model: nn.Module, batch: tuple[Tensor, Tensor]) -> list[ConvCall]:
    """Score `model` with `FastFisherScorer`, returning the convolutions it ran in forward order."""
    calls: dict[int, ConvCall] = {}

    def forward_hook(conv: nn.Module, inputs: tuple[Tensor, ...], _: Tensor) -> None:
        if id(conv) in calls:
            raise ValueError(f"{conv} ran twice in one forward pass; the floor records one call per conv")
        calls[id(conv)] = ConvCall(_replayable(conv), inputs[0].shape)

    def backward_hook(conv: nn.Module, _: tuple[Tensor, ...]) -> None:
        calls[id(conv)].backward = True

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [h for m in convs for h in (m.register_forward_hook(forward_hook),
                                          m.register_full_backward_pre_hook(backward_hook))]
    try:
        bs.FastFisherScorer()(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return list(calls.values())


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _warm_seconds(fn: Callable[[], object]) -> float:
    """Seconds of a second call of `fn`: the first creates oneDNN's primitive for the shape."""
    fn()
    return _seconds(fn)


def _conv_seconds(conv: nn.Conv2d, shape: torch.Size, backward: bool) -> tuple[float, float]:
    """(forward, input-gradient or 0) seconds of `conv` alone on a channels_last input of `shape`."""
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    forward = _warm_seconds(lambda: F.conv2d(x, weight, bias, *args))
    if not backward:
        return forward, 0.0
    grad = torch.randn_like(F.conv2d(x, weight, bias, *args))
    return forward, _warm_seconds(lambda: torch.ops.aten.convolution_backward(
        grad, x, weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups,
        [True, False, False]))


def conv_seconds(calls: list[ConvCall]) -> tuple[float, float]:
    """(forward, input-gradient) seconds of `calls`, each conv alone on channels_last inputs."""
    times = [_conv_seconds(call.conv, call.shape, call.backward) for call in calls]
    return sum(f for f, _ in times), sum(b for _, b in times)


def benchmark(budget: int, n: int, model: str, seed: int, data_dir: str | None) -> dict[str, object]:
    """Conv-only floor, fast scorer on one thread and reference scorer for the same n candidates.

    Like `search_speed.py`, one extra candidate warms both scorers up untimed, then
    each scorer is timed once per candidate, building included; the reference runs
    with this process's torch threads (one per core by default), the fast scorer on one.
    """
    cores = torch.get_num_threads()  # what `blockswap search` starts one worker per
    genotypes = bs.sample_genotypes(bs.Backbone.from_name(model), budget, n + 1, seed=seed)
    batch = probe_images(data_dir).probe_batch(128, seed)
    fast, reference = bs.FastFisherScorer(), bs.FisherScorer()
    totals = {"conv_forward": 0.0, "conv_input_grad": 0.0, "fast": 0.0, "reference": 0.0}
    try:
        for i in [n, *range(n)]:  # candidate n: the untimed warm-up
            seconds = {"reference": _seconds(partial(score_genotype, genotypes[i], i, seed, batch, reference))}
            torch.set_num_threads(1)
            seconds["fast"] = _seconds(partial(score_genotype, genotypes[i], i, seed, batch, fast))
            calls = record_convs(build_candidate(genotypes[i], seed, i), batch)
            seconds["conv_forward"], seconds["conv_input_grad"] = conv_seconds(calls)
            torch.set_num_threads(cores)
            if i < n:
                for key, value in seconds.items():
                    totals[key] += value
    finally:
        torch.set_num_threads(cores)
    per = {k: v / n for k, v in totals.items()}
    floor = per["conv_forward"] + per["conv_input_grad"]
    return {
        "conv_s_per_candidate": floor,
        "conv_forward_s_per_candidate": per["conv_forward"],
        "conv_input_grad_s_per_candidate": per["conv_input_grad"],
        "fast_one_thread_s_per_candidate": per["fast"],
        "conv_share": floor / per["fast"],
        "reference_s_per_candidate": per["reference"],
        "cores": cores,
        "search_1000_floor_s": 1000 * floor / cores,
        "speedup_ceiling": per["reference"] / (floor / cores),
        "candidates": n,
        "budget": budget,
        "model": model,
        "data": data_dir or "embedded 1,000-image sample",
    }


def main() -> None:
    args = candidates_parser(__doc__.split("\n")[0], candidates=10).parse_args()
    result = benchmark(args.budget, args.candidates, args.model, args.seed, args.data_dir or default_data_dir())
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']} at {format_count(args.budget)}, {args.candidates} candidates, data: {result['data']}")
    print(f"convolutions alone     {result['conv_s_per_candidate']:.3f} s/candidate on one core "
          f"(forward {result['conv_forward_s_per_candidate']:.3f}, input gradient "
          f"{result['conv_input_grad_s_per_candidate']:.3f})")
    print(f"fast scorer, 1 thread  {result['fast_one_thread_s_per_candidate']:.3f} s/candidate "
          f"(convolutions are {100 * result['conv_share']:.0f}%)")
    print(f"reference              {result['reference_s_per_candidate']:.3f} s/candidate")
    print(f"floor on {result['cores']} cores       1000 candidates in {result['search_1000_floor_s']:.0f} s; "
          f"at most {result['speedup_ceiling']:.2f}x over the reference")


if __name__ == "__main__":
    main()
