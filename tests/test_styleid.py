"""StyleID on the tiny random SD-2.1-shaped model, CPU fp32 (docs/styleid.md §3, §5, §10, §11)."""
import numpy as np
import pytest

from common.jittor_env import load_jittor
from common.sd.attention import AttnProcessor
from common.sd.ddim import DDIMScheduler
from common.sd.weights import load_state_dict
from common.sd.unet import UNet2DConditionModel
from common.devkit.tiny_weights import SCHEDULER, UNET, tiny_state_dict
from consumer.features import FeatureStore
from consumer.processors import RecordProcessor, hook_name
from consumer.styleid import StyleID

jt = load_jittor()

LAYERS = tuple(f"up_blocks.{b}.attentions.{a}" for b in (2, 3) for a in range(3))
STEPS = 3


class _Model:
    """The tiny UNet (weights by common.devkit.tiny_weights) and SD 2.1's v-prediction DDIM: no VAE or CLIP needed."""

    def __init__(self):
        self.unet = UNet2DConditionModel(UNET)
        load_state_dict(self.unet, tiny_state_dict({k: v.shape for k, v in self.unet.state_dict().items()}), "tiny weights")
        self.scheduler = DDIMScheduler.from_config(SCHEDULER)


@pytest.fixture(scope="module")
def sd():
    return _Model()


@pytest.fixture(scope="module")
def cond():
    rng = np.random.default_rng(99)  # stands in for the empty prompt's embedding
    return jt.array(rng.standard_normal((1, 77, UNET["cross_attention_dim"])).astype(np.float32))


def _styleid(sd, cond, **settings):
    settings = dict(dict(steps=STEPS, gamma=0.75, temperature=1.5, layers=LAYERS, adain=True), **settings)
    return StyleID(sd.unet, sd.scheduler, cond, **settings)


def _latents(seed, batch=1):
    return jt.array(np.random.default_rng(seed).standard_normal((batch, 4, 16, 16)).astype(np.float32))


def test_inversion_then_plain_reversion_reconstructs_better_with_more_steps(sd, cond):
    z0 = _latents(0)
    errors = []
    for steps in (4, 8, 16):
        styleid = _styleid(sd, cond, steps=steps, layers=())
        x_T, _ = styleid.invert(z0, "")
        with jt.no_grad():
            back = styleid.loop(x_T, inverse=False)
        errors.append(float(np.abs(back.numpy() - z0.numpy()).mean()))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors  # first-order: the error shrinks about as 1/steps


def test_the_clock_holds_each_calls_timestep_value_and_is_cleared_after_and_beats_name_the_phase(sd, cond):
    styleid, seen, beats = _styleid(sd, cond, steps=5, layers=()), [], []

    def model(x, t):
        seen.append((styleid.clock.now(), t))
        return x * 0.0

    styleid.model = model
    styleid.loop(_latents(0), inverse=True, beat=beats.append, phase="style inversion")
    styleid.loop(_latents(0), inverse=False)
    assert seen == [(t, t) for t in (1, 201, 401, 601, 801)] + [(t, t) for t in (801, 601, 401, 201, 1)]
    assert beats == [f"style inversion {i}/5" for i in range(1, 6)]
    assert styleid.clock.t is None
    with pytest.raises(RuntimeError):
        styleid.clock.now()


def test_only_the_configured_layers_record_at_every_timestep_with_their_shapes(sd, cond):
    x_T, kv = _styleid(sd, cond).invert(_latents(1, batch=2), "kv")
    names = [hook_name(layer) for layer in LAYERS]
    assert kv.layers() == sorted(names)
    assert kv.timesteps() == sorted(sd.scheduler.timesteps(STEPS))
    assert len(kv) == len(names) * 2 * STEPS
    for name in names:  # up_blocks.2 runs at 8x8, up_blocks.3 at 16x16 for a 16x16 latent
        tokens = 64 if name.startswith("up_blocks.2") else 256
        for kind in "kv":
            assert kv.get(name, kind, 1).shape == (2, tokens, 32)
    assert x_T.shape == (2, 4, 16, 16)


def test_the_hooks_change_nothing_and_are_removed_after_use(sd, cond):
    styleid, x = _styleid(sd, cond), _latents(2)
    with jt.no_grad():
        plain = styleid.model(x, 501).numpy()
        styleid.clock.t = 501
        store = FeatureStore()
        hooks = {n: RecordProcessor(n, styleid.clock, store, "qkv") for n in styleid.names}
        with styleid.processors(hooks):
            recorded = styleid.model(x, 501).numpy()
        styleid.clock.t = None
    np.testing.assert_array_equal(recorded, plain)
    assert len(store) == 3 * len(styleid.names)
    layers = sd.unet.attention_layers()
    assert all(isinstance(layers[n].processor, AttnProcessor) for n in styleid.names)


def test_without_layers_stylizing_is_plain_inversion_and_reversion(sd, cond):
    styleid, z = _styleid(sd, cond, layers=(), adain=False), _latents(3)
    style = styleid.invert_style(_latents(4))
    out = styleid.stylize(z, style).numpy()
    with jt.no_grad():
        plain = styleid.loop(styleid.loop(z, inverse=True), inverse=False)
    np.testing.assert_array_equal(out, plain.numpy())


def test_injection_changes_the_result(sd, cond):
    z, style_latent = _latents(3), _latents(4)
    on = _styleid(sd, cond, adain=False)
    off = _styleid(sd, cond, layers=(), adain=False)
    a = on.stylize(z, on.invert_style(style_latent)).numpy()
    b = off.stylize(z, off.invert_style(style_latent)).numpy()
    assert np.abs(a - b).max() > 1e-3


def test_batched_contents_equal_one_at_a_time(sd, cond):
    styleid = _styleid(sd, cond)
    style = styleid.invert_style(_latents(5))
    contents = _latents(6, batch=3)
    together = styleid.stylize(contents, style).numpy()
    for b in range(3):
        alone = styleid.stylize(contents[b:b + 1], style).numpy()
        np.testing.assert_allclose(together[b:b + 1], alone, atol=1e-5)


def test_a_recomputed_style_inversion_is_bit_identical(sd, cond):
    styleid = _styleid(sd, cond)
    first, second = styleid.invert_style(_latents(7)), styleid.invert_style(_latents(7))
    assert first.kv.keys() == second.kv.keys()
    np.testing.assert_array_equal(first.x_T.numpy(), second.x_T.numpy())
    for key in first.kv.keys():
        np.testing.assert_array_equal(first.kv.get(*key).numpy(), second.kv.get(*key).numpy())
    content = _latents(8)
    np.testing.assert_array_equal(styleid.stylize(content, first).numpy(), styleid.stylize(content, second).numpy())


def test_an_unknown_layer_or_a_non_positive_temperature_is_a_config_error_naming_it(sd, cond):
    with pytest.raises(ValueError, match=r"consumer.layers: 'up_blocks.0.attentions.0'"):
        _styleid(sd, cond, layers=("up_blocks.0.attentions.0",))
    with pytest.raises(ValueError, match=r"consumer.temperature"):
        _styleid(sd, cond, temperature=0.0)


def test_reversion_reads_each_layer_at_the_timestep_of_the_unet_call(sd, cond):
    styleid = _styleid(sd, cond)
    style = styleid.invert_style(_latents(9))
    reads, calls = [], []

    class Spy(FeatureStore):
        def get(self, layer, kind, t):
            reads.append((t, layer, kind))
            return super().get(layer, kind, t)

    spy = Spy()
    for key in style.kv.keys():
        spy.put(*key, style.kv.get(*key))
    style.kv = spy
    unet_call = sd.unet.execute

    def spying_execute(sample, timestep, encoder_hidden_states):
        calls.append(timestep)
        return unet_call(sample, timestep, encoder_hidden_states)

    sd.unet.execute = spying_execute
    try:
        styleid.stylize(_latents(10), style)
    finally:
        del sd.unet.execute
    timesteps = sd.scheduler.timesteps(STEPS)
    assert calls[-STEPS:] == timesteps  # the reversion's UNet calls, descending
    expected = [(t, hook_name(layer), kind) for t in timesteps for layer in LAYERS for kind in "kv"]
    assert sorted(reads) == sorted(expected)
    assert [r[0] for r in reads] == sorted((r[0] for r in reads), reverse=True)  # never a later t's record
