"""Writing a study's figures: laid out, saved as PNG atomically, freed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..util.rundir import atomic_file


def save_png(fig: Any, path: Path, top: float = 1.0) -> None:
    """Lay out (below `top`, leaving room for a suptitle), write the figure as PNG atomically, free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0, 1, top))
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
