"""Text to image: DDIM with classifier-free guidance, as JDiffusion's StableDiffusionPipeline does it.

Each image's starting noise comes from NumPy seeded by that image's own seed, so its noise does not depend
on the device, on the batch it shares, or on its place in that batch.
"""
import hashlib
from typing import List, Optional, Sequence, Tuple

import numpy as np

from common.jittor_env import load_jittor
from common.sd.pipeline import require_finite
from common.sd.sampling import ClassifierFreeGuidance, TextConditioned, ddim
from common.stage import Beat

jt = load_jittor()


def image_seed(seed: int, style: str, prompt: str) -> int:
    """The seed of one image: a hash of (base seed, style, prompt), so every prompt gets its own noise and
    adding or reordering prompts changes no other image."""
    digest = hashlib.sha256(f"{seed}\0{style}\0{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def initial_noise(seed: int, shape: Sequence[int]) -> np.ndarray:
    """x_T for one image: standard normal float32 from a NumPy Generator seeded by `seed` (DDIM's σ is 1)."""
    return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)


def generate(sd, prompts: List[str], seeds: List[int], size: int = 512, steps: int = 25,
             guidance: float = 7.5, negative_prompt: str = "",
             beat: Optional[Beat] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Generate one image per (prompt, seed) in one batch.

    Returns (latents float32 (B,4,h,w), already scaled by the VAE's scaling_factor; images uint8 (B,H,W,3)).
    Guidance runs the unconditional and conditional halves in one UNet call ([uncond; cond], as diffusers);
    with guidance <= 1 the unconditional half is skipped (it would not change the result).
    Raises NonFiniteError naming the batch positions whose latent or decoded image has NaN/inf.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
    n = len(prompts)
    factor = sd.latent_factor
    if size % factor:
        raise ValueError(f"generate: size {size} is not a multiple of the VAE's factor {factor}")
    shape = (sd.unet.config["in_channels"], size // factor, size // factor)
    x = jt.array(np.stack([initial_noise(s, shape) for s in seeds]))
    use_guidance = guidance > 1.0
    progress = None if beat is None else (lambda i, total: beat(f"gen {i}/{total}"))
    with jt.no_grad():
        texts = ([negative_prompt] * n if use_guidance else []) + list(prompts)
        context = sd.encode_prompt(texts)
        if use_guidance:
            model = ClassifierFreeGuidance(sd.unet, context, guidance)
        else:
            model = TextConditioned(sd.unet, context)
        x = ddim(model, sd.scheduler, x, steps, after_step=progress)
        latents = x.numpy().astype(np.float32)
        require_finite(latents, "latent")
        images = sd.decode_latents(x)
    return latents, images
