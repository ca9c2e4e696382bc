"""A picture of a genotype in the style of the paper's Figs. 5 and 6: its blocks in order as bars.

Bar height is the block body's parameter count, colour the block type's declared `family`, dashed lines mark
the stage boundaries, and the title gives the model, total parameters and MACs. matplotlib (the `study`
extra) is imported only when a picture is drawn, so the space floor does not need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..util.counts import format_count
from ..util.errors import BlockSwapError
from ..util.rundir import atomic_file
from .blocks import block_type
from .genotype import Genotype

__all__ = ["GenotypePlot", "plot_genotype", "FAMILY_LABELS"]

# What each published family code means; a user's family is shown under its own label.
FAMILY_LABELS = {
    "S": "S: standard (Conv)",
    "G": "G: grouped or depthwise + pointwise (DConv*)",
    "B": "B: bottleneck (ConvB*, A*B*, G*B*)",
    "baseline": "baseline: Table 2 single types (MBConv6, DARTS)",
}
_COLOURS = ["#4c72b0", "#55a868", "#dd8452", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
_FAMILY_ORDER = list(FAMILY_LABELS)


@dataclass(frozen=True)
class GenotypePlot:
    """What `plot_genotype` drew, read back from the figure's bars and lines, so a caller (or a test) can
    check the picture without reading pixels."""

    blocks: tuple[str, ...]
    heights: tuple[int, ...]  # body parameters of each block, the bar heights
    families: tuple[str, ...]  # each bar's colour key
    boundaries: tuple[float, ...]  # x of the dashed line before the first block of each stage after the first
    title: str


def _import_matplotlib() -> tuple[type, type]:
    """matplotlib's Figure and FuncFormatter, or one line saying how to install it."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise BlockSwapError("drawing a genotype needs matplotlib: pip install 'blockswap[study]'") from None
    return Figure, FuncFormatter


def plot_genotype(genotype: Genotype, path: str | Path) -> GenotypePlot:
    """Draw `genotype` as one bar per block (height = body parameters, colour = family) and write it as PNG."""
    figure_class, formatter = _import_matplotlib()
    b = genotype.backbone
    shapes = b.block_shapes()
    types = [block_type(name) for name in genotype.blocks]
    heights = tuple(t.params(s.c_in, s.c_out, s.stride, b.post_activation) for t, s in zip(types, shapes))
    families = tuple(t.family for t in types)
    stages = b.block_stages()
    boundaries = tuple(i - 0.5 for i in range(1, len(stages)) if stages[i] != stages[i - 1])
    title = (f"{b.name} ({b.num_classes} classes): {format_count(genotype.params())} params, "
             f"{format_count(genotype.macs())} MACs")
    rank = {f: i for i, f in enumerate(_FAMILY_ORDER)}
    order = sorted(set(families), key=lambda f: (rank.get(f, len(rank)), f))
    colour = {f: _COLOURS[i % len(_COLOURS)] for i, f in enumerate(order)}

    fig = figure_class(figsize=(max(6.0, 0.38 * len(heights) + 2.5) + 3.0, 4.2))
    ax = fig.add_subplot()
    bars = {}
    for f in order:
        xs = [i for i, family in enumerate(families) if family == f]
        bars[f] = ax.bar(xs, [heights[i] for i in xs], color=colour[f], edgecolor="black", linewidth=0.4,
                         label=FAMILY_LABELS.get(f, f"{f}: a user's family"))
    for x in boundaries:
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.9)
    starts = [-0.5, *boundaries, len(heights) - 0.5]
    for s, (left, right) in enumerate(zip(starts, starts[1:]), start=1):
        ax.text((left + right) / 2, 1.01, f"stage {s}", transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=8, color="grey")
    ticks = [f"{i} {n}" for i, n in enumerate(genotype.blocks, start=1)]  # positions from 1, as placement's
    ax.set_xticks(range(len(heights)), ticks, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(heights) - 0.4)
    ax.set_ylabel("parameters of the block body")
    ax.yaxis.set_major_formatter(formatter(lambda v, _: format_count(v)))
    ax.legend(fontsize=7, title="colour: the type's declared family", title_fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10, pad=16)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    drawn = sorted((round(r.get_x() + r.get_width() / 2), int(r.get_height()), f) for f, c in bars.items() for r in c)
    lines = tuple(float(line.get_xdata()[0]) for line in ax.get_lines())
    return GenotypePlot(tuple(genotype.blocks), tuple(h for _, h, _ in drawn), tuple(f for _, _, f in drawn), lines,
                        ax.get_title())
