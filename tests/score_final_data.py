"""The end-to-end score test's inputs: two styles in the challenge's layout, small images of the shapes the
CLIP-IQA test uses (generated 64x64, references 56x72), generated images named by words of the demo's
word list (the prompt of an image is its file name)."""
from pathlib import Path

import numpy as np
from PIL import Image

GENERATED = {"A": ("Cat", "Tree", "Apple"), "B": ("Bird", "House", "Car")}
REFERENCES = 2
GEN_SIZE, REF_SIZE = (64, 64), (56, 72)  # (height, width)


def _picture(rng, h: int, w: int) -> np.ndarray:
    """A seeded blend of colour ramps and a flat colour, plus noise, as uint8 RGB."""
    y, x = np.mgrid[0:h, 0:w]
    ramp = np.stack([x * 255 / w, y * 255 / h, (x + y) * 255 / (h + w)], axis=-1)[..., rng.permutation(3)]
    mix, base = rng.uniform(0, 1), rng.uniform(0, 255, 3)
    return np.clip(mix * ramp + (1 - mix) * base + rng.normal(0, rng.uniform(5, 60), (h, w, 3)), 0, 255
                   ).astype(np.uint8)


def write_styles(folder) -> dict:
    """{style: (generated paths, reference paths)}: `folder`/results/STYLE/WORD.png and
    `folder`/data/STYLE/images/NN.png."""
    folder = Path(folder)
    styles = {}
    for seed, (style, words) in enumerate(GENERATED.items()):
        rng = np.random.default_rng(100 + seed)
        gens = [folder / "results" / style / f"{word}.png" for word in words]
        refs = [folder / "data" / style / "images" / f"{i:02d}.png" for i in range(REFERENCES)]
        for paths, (h, w) in ((gens, GEN_SIZE), (refs, REF_SIZE)):
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_picture(rng, h, w)).save(path)
        styles[style] = (gens, refs)
    return styles
