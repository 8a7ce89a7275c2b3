"""The reference side of the end-to-end goldens (make_sd1.py, make_transformers5.py): diffusers'
StableDiffusionPipeline from a model folder, switched to DDIM as StyleID samples, run from fixed latents
with classifier-free guidance. Works with every diffusers these scripts use (0.27.2 and 0.42).
"""
import numpy as np
import torch

PROMPT = "a painting of a dog, in style_07"
STEPS, GUIDANCE = 3, 7.5
LATENT_SHAPE = (1, 4, 16, 24)  # non-square: 128 x 192 pixels


def reference_run(pipe) -> dict:
    """{prompt, steps, guidance, latents, embeds (uncond; cond), timesteps, step_latents, image uint8} of one
    guided DDIM run."""
    from diffusers import DDIMScheduler
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    latents = np.random.default_rng(11).standard_normal(LATENT_SHAPE).astype(np.float32)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    steps = []

    def record(_pipe, _i, _t, kwargs):
        steps.append(kwargs["latents"].detach().numpy().copy())
        return kwargs

    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    with torch.no_grad():
        image = pipe(PROMPT, height=LATENT_SHAPE[2] * factor, width=LATENT_SHAPE[3] * factor,
                     num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=torch.from_numpy(latents),
                     output_type="np", callback_on_step_end=record).images
    return {"prompt": np.array(PROMPT), "steps": np.array(STEPS), "guidance": np.array(GUIDANCE),
            "latents": latents, "embeds": torch.cat([uncond, cond]).numpy(),
            "timesteps": pipe.scheduler.timesteps.numpy().astype(np.int64), "step_latents": np.stack(steps),
            "image": np.round(255 * image).astype(np.uint8)}
