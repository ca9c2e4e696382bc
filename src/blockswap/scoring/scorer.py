"""The scorer contract and registry: a `Score` per candidate, the `Scorer` protocol every proxy follows, the
`ScorerInfo` each declares when registered (`register_scorer` / `scorer_info` / `make_scorer`),
`average_scores` over several initialisations, and `model_state`, how scorers and pruning set a network's mode.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from torch import Tensor, nn

from ..space.networks import BlockNetwork
from ..util.errors import BlockSwapError
from ..util.registry import Registry

__all__ = ["average_scores", "Score", "Scorer", "ScorerInfo", "register_scorer", "scorer_info", "scorer_names",
           "scorer_factory", "make_scorer", "model_state"]


@dataclass(frozen=True)
class Score:
    """A candidate's total score and its per-block contributions (forward order)."""

    total: float
    per_block: tuple[float, ...]


class Scorer(Protocol):
    """Anything that scores a freshly initialised network on one minibatch; what its values mean for averaging
    and what they depend on is its `ScorerInfo`, declared with `register_scorer`, not an attribute."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score: ...


@dataclass(frozen=True)
class ScorerInfo:
    """What a proxy declares when registered: how its values average, and what they depend on.

    `log_average`: several initialisations average as exp(mean(log)) (positive values) rather than the plain
    mean (signed or already logarithmic values, which would average to NaN). `needs_weights`: the value
    depends on the initial weights (params and macs do not, so averaging them is pointless). `needs_data`:
    the value depends on the batch's images (synflow, l2, params and macs do not). `sums_blocks`: the total is
    the sum of the per-block values (Fisher), which a resumed search checks of every row it keeps.
    """

    log_average: bool = True
    needs_weights: bool = True
    needs_data: bool = True
    sums_blocks: bool = False


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Scorer]
    info: ScorerInfo
    info_of: Callable[[Any], ScorerInfo] | None


_REGISTRY: Registry[_Entry] = Registry("scorer", "a plugin may register more")


F_ = TypeVar("F_", bound=Callable[..., Any])


def register_scorer(name: str, *, log_average: bool = True, needs_weights: bool = True, needs_data: bool = True,
                    sums_blocks: bool = False,
                    info_of: Callable[[Any], ScorerInfo] | None = None) -> Callable[[F_], F_]:
    """Register a scorer factory (a class or a function returning a `Scorer`) under `name`, with its `ScorerInfo`.

    `make_scorer(name, **settings)` calls it with the settings a search records. The defaults suit a positive
    proxy of the weights and the data; a signed one must say `log_average=False`. A scorer whose info depends
    on its settings (one measuring another proxy) gives `info_of(scorer) -> ScorerInfo`. The same factory
    with the same info again is a no-op; anything else under a taken name is refused.
    """
    _REGISTRY.check_name(name)
    info = ScorerInfo(log_average, needs_weights, needs_data, sums_blocks)

    def decorate(factory: F_) -> F_:
        _REGISTRY.add(name, _Entry(factory, info, info_of))
        return factory

    return decorate


def scorer_info(scorer: str | Scorer) -> ScorerInfo:
    """What a scorer declared at registration: by registered name, or for a scorer built by `make_scorer`.

    A built scorer is known by its class, so a scorer made by a plain function (not a class) gets the defaults.
    """
    if isinstance(scorer, str):
        return _REGISTRY[scorer].info
    entry = next((e for e in _REGISTRY.values() if e.factory is type(scorer)), None)
    if entry is None:
        return ScorerInfo()
    return entry.info if entry.info_of is None else entry.info_of(scorer)


def scorer_factory(name: str) -> Callable[..., Scorer]:
    """The factory registered under `name` (what `make_scorer` calls)."""
    return _REGISTRY[name].factory


def scorer_names() -> list[str]:
    """Every registered scorer name, in registration order."""
    return list(_REGISTRY)


@contextmanager
def model_state(model: nn.Module, training: bool, frozen: bool = False) -> Iterator[None]:
    """Put `model` in train (or eval) mode and, if `frozen`, stop its parameter gradients; restore both after."""
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.train(training)
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training)


def make_scorer(name: str, settings: dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> Scorer:
    """The scorer registered under `name`, built with `settings` as keyword arguments.

    `context` holds what the caller knows (a search's `data_dir`, say): each
    entry the factory takes and `settings` does not set is passed too.
    """
    factory = scorer_factory(name)
    settings = dict(settings or {})
    if context:
        try:
            accepted = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            accepted = {}
        settings = {**{k: v for k, v in context.items() if k in accepted}, **settings}
    try:
        return factory(**settings)
    except TypeError as e:
        raise BlockSwapError(f"scorer {name!r} does not take settings {settings!r}: {e}") from None


def average_scores(scores: list[Score], log_average: bool) -> Score:
    """One score from several initialisations: exp(mean(log)) when `log_average`, else the mean; per block alike."""
    if len(scores) == 1:
        return scores[0]

    def mean(values: list[float]) -> float:
        if not log_average:
            return math.fsum(values) / len(values)
        if any(v < 0 or math.isnan(v) for v in values):
            return math.nan
        if any(v == 0 for v in values):
            return 0.0
        return math.exp(math.fsum(math.log(v) for v in values) / len(values))

    widths = {len(s.per_block) for s in scores}
    per_block = tuple(mean([s.per_block[b] for s in scores]) for b in range(min(widths))) if len(widths) == 1 else ()
    return Score(mean([s.total for s in scores]), per_block)
