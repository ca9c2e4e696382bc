"""Decoding image-folder JPEGs for training: Pillow in full, Pillow at reduced scale (shipped), simplejpeg.

    python3 benchmarks/decode.py --json

Writes N ImageNet-sized JPEGs (500 x 375 unless --width/--height say otherwise,
quality 90: real CIFAR-10 photos upscaled, since this machine has no ImageNet) into a temporary folder, then
times the training view (`random_resized_box` crop resized to 224, flip) of
each three ways on one thread, interleaved in rounds:

| key | what runs |
|---|---|
| `pillow_full_img_s` | Pillow decodes the whole image, then crops and resizes |
| `pillow_draft_img_s` | `blockswap.data.imagefolder.decode_train`: libjpeg's DCT scaling (`Image.draft`) first |
| `simplejpeg_img_s` | simplejpeg decodes (scaled by its `min_height`/`min_width`), Pillow resizes; only if installed |

Prints images per second per core and `draft_speedup` (draft / full).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blockswap.data.cifar import load_embedded_sample
from blockswap.data.imagefolder import _as_tensor, decode_train, random_resized_box

SIZE = 224


def _full(path: str, rng: np.random.Generator) -> torch.Tensor:
    with Image.open(path) as img:
        box = random_resized_box(*img.size, rng)
        out = img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box)
    if rng.uniform() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _as_tensor(out)


def _simplejpeg(path: str, rng: np.random.Generator) -> torch.Tensor:
    import simplejpeg

    data = Path(path).read_bytes()
    width, height, _, _ = simplejpeg.decode_jpeg_header(data)
    box = random_resized_box(width, height, rng)
    scale = SIZE / min(box[2] - box[0], box[3] - box[1])
    pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=int(width * min(scale, 1)),
                                    min_height=int(height * min(scale, 1)))
    fy, fx = pixels.shape[0] / height, pixels.shape[1] / width
    img = Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR,
                                         box=(box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy))
    if rng.uniform() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _as_tensor(img)


def benchmark(n: int, rounds: int, width: int = 500, height: int = 375) -> dict[str, object]:
    """Images per second of each decoder over the same n files and crops, best round of `rounds`."""
    torch.set_num_threads(1)
    ways = {"pillow_full": _full, "pillow_draft": lambda p, r: decode_train(p, SIZE, r)}
    try:
        import simplejpeg  # noqa: F401

        ways["simplejpeg"] = _simplejpeg
    except ImportError:
        pass
    sample = load_embedded_sample()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):
            pixels = sample.images[i].permute(1, 2, 0).numpy()
            path = Path(tmp) / f"{i:04d}.jpg"
            Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
            paths.append(str(path))
        best = {name: float("inf") for name in ways}
        for _ in range(rounds):
            for name, decode in ways.items():
                start = time.perf_counter()
                for i, path in enumerate(paths):
                    decode(path, np.random.default_rng([0, 0, i]))
                best[name] = min(best[name], time.perf_counter() - start)
    out: dict[str, object] = {f"{name}_img_s": n / seconds for name, seconds in best.items()}
    out["draft_speedup"] = best["pillow_full"] / best["pillow_draft"]
    if "simplejpeg" in best:
        out["simplejpeg_vs_draft"] = best["pillow_draft"] / best["simplejpeg"]
    out.update({"images": n, "rounds": rounds, "size": SIZE, "source": f"{width}x{height} JPEG q90", "threads": 1})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--width", type=int, default=500, help="source JPEG width (ImageNet's typical 500 x 375)")
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    result = benchmark(args.images, args.rounds, args.width, args.height)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
