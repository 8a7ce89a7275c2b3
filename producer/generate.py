"""Text to image: DDIM with classifier-free guidance, as JDiffusion's StableDiffusionPipeline does it.

Each image's starting noise comes from NumPy seeded by that image's own seed, so an image does not
depend on the device, on the batch it shares, or on its place in that batch.
"""
import hashlib
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from common.jittor_env import load_jittor

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
             beat: Optional[Callable[[str], None]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Generate one image per (prompt, seed) in one batch.

    Returns (latents float32 (B,4,h,w), already scaled by the VAE's scaling_factor; images uint8 (B,H,W,3)).
    Guidance runs the unconditional and conditional halves in one UNet call ([uncond; cond], as diffusers);
    with guidance <= 1 the unconditional half is skipped (it would not change the result).
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
    with jt.no_grad():
        texts = ([negative_prompt] * n if use_guidance else []) + list(prompts)
        context = sd.encode_prompt(texts)
        for i, t in enumerate(sd.scheduler.timesteps(steps)):
            t = int(t)
            model_in = jt.concat([x, x], dim=0) if use_guidance else x
            out = sd.unet(model_in.cast(context.dtype), t, context).float32()
            if use_guidance:
                uncond, cond = out[:n], out[n:]
                out = uncond + guidance * (cond - uncond)
            x = sd.scheduler.step(out, t, x, steps)
            x.sync()
            if beat is not None:
                beat(f"gen {i + 1}/{steps}")
        images = sd.decode_latents(x)
    latents = x.numpy().astype(np.float32)
    return latents, images
