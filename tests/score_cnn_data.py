"""The small synthetic dataset of the CNN score goldens (tests/golden/make_score_cnn.py, test_score_cnn.py).

Three styles, each with 2 references (304x320, one of them a JPEG: FID shrinks them to 299 with
antialiasing) and 3 generated images (56x72 PNGs: FID enlarges them); smooth random colour fields plus
noise, tinted per style so the histograms and features differ. Same bytes on every run.
"""
from pathlib import Path

import numpy as np
from PIL import Image

STYLES = ("00", "01", "02")
REF_SIZE, GEN_SIZE = (320, 304), (72, 56)  # PIL (width, height)


def _image(seed: int, size, tint) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 5, 3)) * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    pixels = np.asarray(coarse, np.float32) * 0.7 + np.array(tint, np.float32) * 0.3
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_dataset(root) -> dict:
    """{style: (generated paths, reference paths)} written under `root`."""
    root, styles = Path(root), {}
    tints = ((230, 60, 40), (40, 200, 90), (70, 80, 240))
    for s, (style, tint) in enumerate(zip(STYLES, tints)):
        gen_dir, ref_dir = root / "results" / style, root / "dataset" / style / "images"
        gen_dir.mkdir(parents=True, exist_ok=True)
        ref_dir.mkdir(parents=True, exist_ok=True)
        refs = []
        for i in range(2):
            path = ref_dir / f"ref{i}.{'jpg' if i == 1 else 'png'}"
            _image(100 * s + i, REF_SIZE, tint).save(path, quality=90)
            refs.append(path)
        gens = []
        for i in range(3):
            path = gen_dir / f"Prompt{i}.png"
            _image(100 * s + 10 + i, GEN_SIZE, tint[::-1] if i == 2 else tint).save(path)
            gens.append(path)
        styles[style] = (gens, refs)
    return styles
