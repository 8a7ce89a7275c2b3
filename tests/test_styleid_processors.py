"""StyleID's record/inject processors on one attention layer (docs/styleid.md §4, §6)."""
import numpy as np
import pytest

from common.jittor_env import load_jittor
from common.sd import architecture
from common.sd.attention import AttnProcessor
from common.sd.layers import build
from common.devkit.tiny_weights import tiny_param
from consumer.features import FeatureStore, MissingFeature, StepClock
from consumer.processors import InjectProcessor, RecordProcessor

jt = load_jittor()
NAME = "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
C, HEADS, N = 16, 2, 64


def _attn():
    attn = build(architecture.attention(C, heads=HEADS, dim_head=C // HEADS, upcast=True))
    for key, p in attn.state_dict().items():
        p.assign(jt.array(tiny_param(f"{NAME}.{key}", p.shape)))
    attn.name = NAME
    return attn


def _hidden(seed, batch=1):
    return jt.array(np.random.default_rng(seed).standard_normal((batch, N, C)).astype(np.float32))


def _record(attn, h, t, kinds="qkv"):
    clock, store = StepClock(), FeatureStore()
    attn.processor = RecordProcessor(NAME, clock, store, kinds)
    clock.t = t
    out = attn(h)
    return out, store


def _inject(attn, h, t, content, style, gamma, temperature):
    clock = StepClock()
    attn.processor = InjectProcessor(NAME, clock, content, style, gamma, temperature)
    clock.t = t
    return attn(h)


def test_recording_leaves_the_attention_output_unchanged():
    attn, h = _attn(), _hidden(0)
    attn.processor = AttnProcessor()
    plain = attn(h).numpy()
    out, store = _record(attn, h, 21)
    np.testing.assert_array_equal(out.numpy(), plain)
    assert store.keys() == sorted((NAME, kind, 21) for kind in "qkv")
    assert store.get(NAME, "k", 21).shape == (1, N, C)


def test_a_recorder_keeps_only_the_kinds_it_was_given():
    attn = _attn()
    _, style = _record(attn, _hidden(0), 1, "kv")
    _, content = _record(attn, _hidden(0), 1, "q")
    assert [k for _, k, _ in style.keys()] == ["k", "v"] and [k for _, k, _ in content.keys()] == ["q"]


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_injecting_a_layer_into_itself_at_gamma_one_is_plain_attention_with_logits_times_t(temperature):
    attn, h = _attn(), _hidden(1)
    _, store = _record(attn, h, 981)
    injected = _inject(attn, h, 981, store, store, 1.0, temperature).numpy()
    attn.processor, attn.scale = AttnProcessor(), attn.scale * temperature
    np.testing.assert_allclose(injected, attn(h).numpy(), atol=1e-5)


def test_at_gamma_one_the_output_does_not_depend_on_the_current_hidden_state():
    attn = _attn()
    _, content = _record(attn, _hidden(2), 1, "q")
    _, style = _record(attn, _hidden(3), 1, "kv")
    a = _inject(attn, _hidden(4), 1, content, style, 1.0, 1.5).numpy()
    b = _inject(attn, _hidden(5), 1, content, style, 1.0, 1.5).numpy()
    np.testing.assert_array_equal(a, b)


def test_query_preservation_blends_the_content_query_with_the_current_one():
    attn, h_c, h_s, h = _attn(), _hidden(6), _hidden(7), _hidden(8)
    _, content = _record(attn, h_c, 1, "q")
    _, style = _record(attn, h_s, 1, "kv")
    out = _inject(attn, h, 1, content, style, 0.75, 1.5).numpy()
    w = {k: tiny_param(f"{NAME}.{k}", p.shape) for k, p in attn.state_dict().items()}
    q = 0.75 * (h_c.numpy() @ w["to_q.weight"].T) + 0.25 * (h.numpy() @ w["to_q.weight"].T)
    k, v = h_s.numpy() @ w["to_k.weight"].T, h_s.numpy() @ w["to_v.weight"].T
    d = C // HEADS
    heads = []
    for i in range(HEADS):
        s = 1.5 * q[0, :, i * d:(i + 1) * d] @ k[0, :, i * d:(i + 1) * d].T / np.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        heads.append((p / p.sum(-1, keepdims=True)) @ v[0, :, i * d:(i + 1) * d])
    expected = np.concatenate(heads, -1) @ w["to_out.0.weight"].T + w["to_out.0.bias"]
    np.testing.assert_allclose(out[0], expected, atol=1e-5)


def test_style_keys_and_values_of_batch_one_serve_every_content_sample():
    attn, h = _attn(), _hidden(9, batch=3)
    _, content = _record(attn, _hidden(10, batch=3), 1, "q")
    _, style = _record(attn, _hidden(11), 1, "kv")
    together = _inject(attn, h, 1, content, style, 0.75, 1.5).numpy()
    for b in range(3):
        single = FeatureStore()
        single.put(NAME, "q", 1, content.get(NAME, "q", 1)[b:b + 1])
        alone = _inject(attn, h[b:b + 1], 1, single, style, 0.75, 1.5).numpy()
        np.testing.assert_allclose(together[b:b + 1], alone, atol=1e-5)


def test_the_feature_injected_at_t_is_the_one_recorded_at_t():
    attn, timesteps = _attn(), (1, 21, 41)
    content, style = FeatureStore(), FeatureStore()
    for t in timesteps:  # values filled with t: attention averages V, so the output reveals its record's t
        content.put(NAME, "q", t, _hidden(t))
        style.put(NAME, "k", t, _hidden(100 + t))
        style.put(NAME, "v", t, jt.full((1, N, C), float(t)))
    for t in reversed(timesteps):
        out = _inject(attn, _hidden(0), t, content, style, 1.0, 1.5).numpy()
        expected = attn.to_out[0](jt.full((1, N, C), float(t))).numpy()
        np.testing.assert_allclose(out, expected, atol=1e-4)


def test_a_missing_record_raises_naming_the_layer_and_timestep():
    attn = _attn()
    _, store = _record(attn, _hidden(0), 21)
    with pytest.raises(MissingFeature, match=r"attn1.*t=41.*\[21\]"):
        _inject(attn, _hidden(0), 41, store, store, 0.75, 1.5)


def test_a_processor_outside_a_loop_refuses_to_guess_the_timestep():
    attn = _attn()
    attn.processor = RecordProcessor(NAME, StepClock(), FeatureStore(), "kv")
    with pytest.raises(RuntimeError, match="clock"):
        attn(_hidden(0))
