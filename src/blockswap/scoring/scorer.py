"""The scorer contract and registry: a `Score` per candidate, the `Scorer` protocol every proxy follows,
`register_scorer` / `make_scorer`, and `average_scores` over several initialisations.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from torch import Tensor

from ..space.networks import BlockNetwork
from ..util.errors import BlockSwapError

__all__ = ["average_scores", "Score", "Scorer", "register_scorer", "scorer_names", "scorer_factory", "make_scorer"]


@dataclass(frozen=True)
class Score:
    """A candidate's total score and its per-block contributions (forward order)."""

    total: float
    per_block: tuple[float, ...]


class Scorer(Protocol):
    """Anything that scores a freshly initialised network on one minibatch."""

    def __call__(self, model: BlockNetwork, batch: tuple[Tensor, Tensor]) -> Score: ...


_REGISTRY: dict[str, Callable[..., Scorer]] = {}


F_ = TypeVar("F_", bound=Callable[..., Any])


def register_scorer(name: str) -> Callable[[F_], F_]:
    """Register a scorer factory (a class or a function returning a `Scorer`) under `name`.

    `make_scorer(name, **settings)` calls it with the settings a search
    records; a name that is already registered is refused.
    """
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-." for c in name):
        raise BlockSwapError(f"scorer name {name!r} may hold letters, digits, '_', '-' and '.' only")
    if name in _REGISTRY:
        raise BlockSwapError(f"a scorer named {name!r} is already registered")

    def decorate(factory: F_) -> F_:
        _REGISTRY[name] = factory
        return factory

    return decorate


def scorer_factory(name: str) -> Callable[..., Scorer]:
    """The factory registered under `name` (what `make_scorer` calls)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise BlockSwapError(
            f"unknown scorer {name!r}; valid choices: {', '.join(_REGISTRY)} (a plugin may register more)"
        ) from None


def scorer_names() -> list[str]:
    """Every registered scorer name, in registration order."""
    return list(_REGISTRY)


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
