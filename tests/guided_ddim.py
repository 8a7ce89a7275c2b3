"""Our side of the end-to-end goldens (tests/golden/pipeline_run.py): a loaded StableDiffusion sampled with
DDIM and classifier-free guidance from the golden's latents, as diffusers' StableDiffusionPipeline does."""
import numpy as np

from common.jittor_env import load_jittor


def rel_err(y, ref) -> float:
    """max|y - ref| / max|ref| in float32."""
    return float(np.abs(np.asarray(y, dtype=np.float32) - ref).max() / np.abs(ref).max())


def guided_ddim(sd, golden, prefix="pipe_") -> dict:
    """{embeds (uncond; cond), timesteps, step_latents, image uint8} of the golden's run, on our engine."""
    jt = load_jittor()
    prompt, steps = str(golden[prefix + "prompt"]), int(golden[prefix + "steps"])
    guidance = float(golden[prefix + "guidance"])
    embeds = jt.concat([sd.encode_prompt([""]), sd.encode_prompt([prompt])])
    x = jt.array(golden[prefix + "latents"])
    timesteps, step_latents = sd.scheduler.timesteps(steps), []
    with jt.no_grad():
        for t in timesteps:
            out = sd.unet(jt.concat([x, x]), t, embeds).float32()
            uncond, cond = out[:1], out[1:]
            x = sd.scheduler.step(uncond + guidance * (cond - uncond), t, x, steps)
            step_latents.append(x.numpy())
    return {"embeds": embeds.float32().numpy(), "timesteps": np.array(timesteps),
            "step_latents": np.stack(step_latents), "image": sd.decode_latents(x)}
