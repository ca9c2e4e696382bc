"""Write src/blockswap/assets/cifar10_sample.npz: the first 100 training images of each CIFAR-10 class.

    python3 ../shared/data/cifar10/build.py /tmp/cifar && python3 tools/make_embedded_sample.py /tmp/cifar

The sample is the default probe data for `blockswap search` when no --data-dir is given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from blockswap.data.cifar import load_cifar10

PER_CLASS = 100


def main(root: str) -> None:
    train = load_cifar10(root, train=True, download=False)
    labels = train.labels.numpy()
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:PER_CLASS] for c in range(10)]))
    out = Path(__file__).resolve().parents[1] / "src" / "blockswap" / "assets" / "cifar10_sample.npz"
    np.savez_compressed(out, images=train.images.numpy()[keep], labels=labels[keep].astype(np.uint8), index=keep)
    print(f"wrote {len(keep)} images to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
