"""AdaIN of the initial latent (docs/styleid.md §7)."""
import numpy as np

from common.jittor_env import load_jittor
from consumer.adain import adain

jt = load_jittor()


def _latents(seed, shape, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


def test_output_carries_the_style_channel_mean_and_population_std():
    content = _latents(0, (3, 4, 16, 16))
    style = _latents(1, (1, 4, 16, 16), scale=np.array([0.5, 1.0, 2.0, 3.0])[:, None, None], shift=0.7)
    out = adain(jt.array(content), jt.array(style)).numpy()
    for b in range(3):
        np.testing.assert_allclose(out[b].mean(axis=(1, 2)), style[0].mean(axis=(1, 2)), atol=1e-4)
        np.testing.assert_allclose(out[b].std(axis=(1, 2)), style[0].std(axis=(1, 2)), rtol=1e-4)


def test_statistics_are_per_sample_and_channel_over_height_and_width():
    content = _latents(2, (2, 4, 16, 16))
    content[1] = content[1] * 5.0 + 3.0  # a batch-pooled statistic would mix the two samples
    style = _latents(3, (1, 4, 16, 16))
    mu_c = content.mean(axis=(2, 3), keepdims=True)
    sd_c = content.std(axis=(2, 3), keepdims=True)
    expected = style.std(axis=(2, 3), keepdims=True) * (content - mu_c) / (sd_c + 1e-5) + style.mean(
        axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(adain(jt.array(content), jt.array(style)).numpy(), expected, atol=1e-5)


def test_a_sample_does_not_depend_on_the_rest_of_the_batch():
    content = _latents(4, (3, 4, 16, 16))
    style = jt.array(_latents(5, (1, 4, 16, 16)))
    together = adain(jt.array(content), style).numpy()
    for b in range(3):
        alone = adain(jt.array(content[b:b + 1]), style).numpy()
        np.testing.assert_allclose(together[b:b + 1], alone, atol=1e-6)


def test_adain_of_a_latent_with_itself_is_the_identity():
    x = _latents(6, (2, 4, 16, 16))
    np.testing.assert_allclose(adain(jt.array(x), jt.array(x)).numpy(), x, atol=1e-4)


def test_a_constant_channel_does_not_divide_by_zero():
    content = _latents(7, (1, 4, 16, 16))
    content[0, 2] = 0.25
    out = adain(jt.array(content), jt.array(_latents(8, (1, 4, 16, 16)))).numpy()
    assert np.isfinite(out).all()
