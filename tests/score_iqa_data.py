"""The CLIP-IQA test images: two sizes (the checker scores a style's images at their own size, no resize)."""
from pathlib import Path

import numpy as np
from PIL import Image

ANCHORS = ("Good photo.", "Bad photo.")
SIZES = {"square": (64, 64, 3), "wide": (56, 72, 2)}  # name: (height, width, count); 56x72 floors in the pools


def write_images(folder) -> dict:
    """{size name: [png paths]}: seeded blends of colour ramps and a flat colour, plus noise, as uint8 RGB."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    groups = {}
    for name, (h, w, count) in SIZES.items():
        groups[name] = []
        for i in range(count):
            y, x = np.mgrid[0:h, 0:w]
            ramp = np.stack([x * 255 / w, y * 255 / h, (x + y + 40 * i) % 256], axis=-1)
            mix, base = rng.uniform(0, 1), rng.uniform(0, 255, 3)  # images far apart in colour and contrast
            pixels = mix * ramp + (1 - mix) * base + rng.normal(0, rng.uniform(5, 60), (h, w, 3))
            pixels = np.clip(pixels, 0, 255).astype(np.uint8)
            path = folder / f"{name}_{i}.png"
            Image.fromarray(pixels).save(path)
            groups[name].append(path)
    return groups
