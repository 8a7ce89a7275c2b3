"""StableDiffusion bundle on the tiny model: load, prompt → UNet → decode shapes, LoRA swaps without reloads."""
import numpy as np
import pytest

import common.sd.pipeline as pipeline
from common.jittor_env import load_jittor
from common.sd.pipeline import StableDiffusion

jt = load_jittor()


@pytest.fixture(scope="module")
def sd(tiny_model_dir):
    return StableDiffusion.load(tiny_model_dir, "float32", "cpu")


def lora(folder, style):
    found = sorted((folder / "loras" / f"style_{style}").glob("pytorch_lora_weights.*"))
    assert len(found) == 1
    return found[0]


def test_prompt_to_image_shapes(sd):
    cond = sd.encode_prompt(["a cat", "a dog in style_00"])
    assert cond.shape == (2, 77, sd.text_encoder.config["hidden_size"])
    x = jt.array(np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32))
    for t in sd.scheduler.timesteps(2):
        x = sd.scheduler.step(sd.unet(x, t, cond), t, x, 2)
    assert x.shape == (2, 4, 8, 8) and np.isfinite(x.numpy()).all()
    images = sd.decode_latents(x)
    factor = 2 ** (len(sd.vae.config["block_out_channels"]) - 1)
    assert images.dtype == np.uint8 and images.shape == (2, 8 * factor, 8 * factor, 3)


def test_encode_images_gives_scaled_posterior_means(sd):
    images = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    latents = sd.encode_images(images)
    with jt.no_grad():
        mean, _ = sd.vae.encode(jt.array((images.astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2)))
    assert latents.shape == (1, 4, 8, 8)
    np.testing.assert_allclose(latents.numpy(), mean.numpy() * 0.18215, rtol=1e-5, atol=1e-6)


def test_set_lora_swaps_without_reading_the_base_again(sd, tiny_model_dir, monkeypatch):
    reads = []
    import common.sd.model_source as model_source
    monkeypatch.setattr(model_source, "open_weights", lambda *a, **k: reads.append(a) or pytest.fail("base re-read"))
    base = {k: v.numpy().copy() for k, v in sd.unet.state_dict().items()}
    x = jt.array(np.ones((1, 4, 8, 8), np.float32))
    cond = sd.encode_prompt(["a cat"])
    out_base = sd.unet(x, 961, cond).numpy()
    sd.set_lora(lora(tiny_model_dir, "00"))
    out_00 = sd.unet(x, 961, cond).numpy()
    sd.set_lora(lora(tiny_model_dir, "00"))  # idempotent
    sd.set_lora(lora(tiny_model_dir, "01"), 0.8)
    out_01 = sd.unet(x, 961, cond).numpy()
    assert not np.allclose(out_00, out_base) and not np.allclose(out_01, out_00)
    sd.set_lora(lora(tiny_model_dir, "00"))
    np.testing.assert_array_equal(sd.unet(x, 961, cond).numpy(), out_00)
    sd.set_lora(None)
    assert all(np.array_equal(v.numpy(), base[k]) for k, v in sd.unet.state_dict().items())
    assert reads == []


def test_shared_returns_one_copy_per_folder(tiny_model_dir):
    a = StableDiffusion.shared(tiny_model_dir, "float32", "cpu")
    assert StableDiffusion.shared(str(tiny_model_dir), "float32", "cpu") is a


def test_fp16_loads_unet_and_text_encoder_in_half_and_vae_in_float(tiny_model_dir):
    sd = StableDiffusion.load(tiny_model_dir, "float16", "cpu")
    assert str(sd.unet.conv_in.weight.dtype) == "float16"
    assert str(sd.text_encoder.text_model.embeddings.token_embedding.weight.dtype) == "float16"
    assert str(sd.vae.decoder.conv_in.weight.dtype) == "float32"
    with pytest.raises(ValueError, match="bfloat16"):
        StableDiffusion.load(tiny_model_dir, "bfloat16", "cpu")


def test_loading_checks_the_process_device_and_changes_no_flag(tiny_model_dir):
    from common.jittor_env import DeviceUnavailable
    before = jt.flags.use_cuda
    other = "cpu" if before else "cuda"  # the device this process does not run on
    with pytest.raises(DeviceUnavailable, match="no CUDA" if not jt.has_cuda else "not cpu"):
        StableDiffusion.load(tiny_model_dir, "float32", other)
    assert jt.flags.use_cuda == before


def test_decoding_refuses_nan_latents_naming_their_batch_positions(sd):
    z = np.zeros((3, 4, 8, 8), np.float32)
    z[1, 0, 2, 3] = np.nan
    with pytest.raises(pipeline.NonFiniteError, match=r"decoded image at batch position\(s\) \[1\]") as err:
        sd.decode_latents(z)
    assert err.value.indices == [1]
