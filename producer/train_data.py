"""A style's training images, and the random draws of each training step.

Images: every file with an image suffix in STYLE/images/, in sorted order (common.style_files), RGB (EXIF orientation
applied), resized with its shorter side to the resolution (bilinear) and centre-cropped (`crop`), or
resized straight to a square (`stretch`, what JDiffusion's Jittor `transform.Resize(int)` does), then
scaled to [-1, 1].

Draws: one NumPy Generator seeded by `train.seed` makes every random choice, so a run is a function of
the seed, and a checkpoint that saves the Generator's state (and the epoch's order) resumes the exact
sequence. The rule for which image a step uses, as a data loader that shuffles each epoch: at every
epoch start (step 0, N, 2N, ... for N images) a fresh permutation of the N images is drawn, and step k
trains on image order[k mod N]. Then, per step and in this order: the VAE posterior's noise, the
diffusion noise (both standard normal, the latent's shape), the timestep, uniform in
{0, ..., num_train_timesteps - 1}, and, only with a noise offset, a standard normal per latent channel.
A batch of B is B consecutive draws. With prior preservation an optimiser step draws its instance
samples, then as many class samples the same way (the class image from its own per-epoch permutation).
A LoRA packed over S styles (`RoundRobinDraws`) takes step k's image from style k mod S, each style's
images in its own per-epoch permutation, so every style is seen equally often whatever its image count.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from common.images import open_rgb
from common.style_files import training_images

RESIZE_MODES = ("crop", "stretch")


def load_image(path, size: int, resize: str = "crop") -> np.ndarray:
    """One image as float32 (3, size, size) in [-1, 1]; an unreadable file is a one-line ValueError."""
    from PIL import Image
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize mode {resize!r}: use one of {RESIZE_MODES}")
    image = open_rgb(path)  # as the consumer reads style images: every mode, EXIF, alpha; ImageError is a ValueError
    w, h = image.size
    if resize == "stretch":
        image = image.resize((size, size), Image.BILINEAR)
    else:
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.BILINEAR)
        left, top = round((nw - size) / 2.0), round((nh - size) / 2.0)
        image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, dtype=np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1).copy()


def load_images(style_dir, size: int, resize: str = "crop") -> tuple:
    """(files, float32 (N, 3, size, size)) of a style's training images."""
    files = training_images(style_dir)
    return files, np.stack([load_image(p, size, resize) for p in files])


@dataclass(frozen=True)
class Draw:
    """The random inputs of one training sample."""
    image: int  # index into the style's images
    posterior_noise: np.ndarray  # float32 latent shape: z0 = mean + std · this
    noise: np.ndarray  # float32 latent shape: the diffusion noise ε
    timestep: int
    offset: Optional[np.ndarray] = None  # float32 (channels,): the noise offset's draw, when one is set


class Draws:
    """Every step's draws from one seeded Generator; `state()` / `restore()` carry it through checkpoints.
    With class images (prior preservation) `next_prior()` draws a class sample the same way, from its own
    epochs over the class images and the same Generator."""

    def __init__(self, rng: np.random.Generator, n_images: int, latent_shape: tuple, num_timesteps: int,
                 offset: bool = False, n_class_images: int = 0):
        self.rng, self.n, self.shape, self.num_timesteps = rng, n_images, tuple(latent_shape), num_timesteps
        self.offset, self.n_class = offset, n_class_images
        self.step = self.prior_step = 0
        self.order = self.prior_order = None

    def next(self) -> Draw:
        if self.step % self.n == 0:
            self.order = self.rng.permutation(self.n)
        image = int(self.order[self.step % self.n])
        self.step += 1
        return self._sample(image)

    def next_prior(self) -> Draw:
        """A class sample: its image indexes the class images."""
        if self.prior_step % self.n_class == 0:
            self.prior_order = self.rng.permutation(self.n_class)
        image = int(self.prior_order[self.prior_step % self.n_class])
        self.prior_step += 1
        return self._sample(image)

    def _sample(self, image: int) -> Draw:
        posterior = self.rng.standard_normal(self.shape, dtype=np.float32)
        noise = self.rng.standard_normal(self.shape, dtype=np.float32)
        timestep = int(self.rng.integers(0, self.num_timesteps))
        offset = self.rng.standard_normal(self.shape[:1], dtype=np.float32) if self.offset else None
        return Draw(image, posterior, noise, timestep, offset)

    def state(self) -> dict:
        state = {"step": self.step, "order": _listed(self.order), "rng": self.rng.bit_generator.state}
        if self.n_class:
            state.update(prior_step=self.prior_step, prior_order=_listed(self.prior_order))
        return state

    def restore(self, state: dict) -> None:
        self.step = int(state["step"])
        self.order = None if state["order"] is None else np.array(state["order"], dtype=np.int64)
        if self.n_class:
            self.prior_step = int(state["prior_step"])
            self.prior_order = None if state["prior_order"] is None else np.array(state["prior_order"], np.int64)
        self.rng.bit_generator.state = state["rng"]


class RoundRobinDraws(Draws):
    """Draws over several styles' images, concatenated in style order (`sizes` images each): step k's
    image is style k mod S's next, from that style's own permutation, redrawn as each of its epochs starts."""

    def __init__(self, rng: np.random.Generator, sizes: list, latent_shape: tuple, num_timesteps: int,
                 offset: bool = False):
        super().__init__(rng, sum(sizes), latent_shape, num_timesteps, offset)
        self.sizes = [int(n) for n in sizes]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.taken = [0] * len(self.sizes)  # per style: images drawn so far
        self.orders = [None] * len(self.sizes)  # per style: its epoch's permutation

    def next(self) -> Draw:
        s = self.step % len(self.sizes)
        n, k = self.sizes[s], self.taken[s]
        if k % n == 0:
            self.orders[s] = self.rng.permutation(n)
        self.taken[s] += 1
        self.step += 1
        return self._sample(self.starts[s] + int(self.orders[s][k % n]))

    def state(self) -> dict:
        return {**super().state(), "taken": list(self.taken), "orders": [_listed(o) for o in self.orders]}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.taken = [int(k) for k in state["taken"]]
        self.orders = [None if o is None else np.array(o, dtype=np.int64) for o in state["orders"]]


def _listed(order) -> Optional[list]:
    return None if order is None else [int(i) for i in order]
