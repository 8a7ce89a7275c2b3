"""attention(): the fused CPU kernel and the generic path agree with a float64 NumPy reference."""
import numpy as np
import pytest

from common.jittor_env import load_jittor
from common.sd import architecture
from common.sd.attention import AttnProcessor, _attention_generic, attention, fused_cpu_available
from common.sd.layers import build

jt = load_jittor()
HEADS, C = 2, 16


def reference(q, k, v, heads, scale, causal=False):
    b, n, c = q.shape
    d = c // heads
    k, v = np.broadcast_to(k, (b,) + k.shape[1:]), np.broadcast_to(v, (b,) + v.shape[1:])
    split = lambda x: x.astype(np.float64).reshape(b, x.shape[1], heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    logits = scale * split(q) @ split(k).transpose(0, 1, 3, 2)
    if causal:
        logits = np.where(np.triu(np.ones((n, k.shape[1]), bool), k=1), -np.inf, logits)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ split(v)).transpose(0, 2, 1, 3).reshape(b, n, c)


def inputs(b, n, kv_batch, m, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, n, C)).astype(np.float32),
            rng.standard_normal((kv_batch, m, C)).astype(np.float32),
            rng.standard_normal((kv_batch, m, C)).astype(np.float32))


@pytest.mark.parametrize("b,n,kv_batch,m", [(2, 200, 2, 200), (2, 200, 1, 200), (2, 200, 2, 77)],
                         ids=["self", "broadcast-kv", "cross"])
def test_attention_matches_reference_across_query_blocks(b, n, kv_batch, m):
    q, k, v = inputs(b, n, kv_batch, m)
    scale = 1.7 / np.sqrt(C // HEADS)  # a StyleID temperature folded into the scale
    out = attention(jt.array(q), jt.array(k), jt.array(v), HEADS, scale).numpy()
    assert out.shape == q.shape
    np.testing.assert_allclose(out, reference(q, k, v, HEADS, scale), atol=2e-5)


def test_generic_path_matches_reference_with_broadcast_kv():
    q, k, v = inputs(2, 200, 1, 77)
    out = _attention_generic(jt.array(q), jt.array(k), jt.array(v), HEADS, 0.3, upcast=True).numpy()
    np.testing.assert_allclose(out, reference(q, k, v, HEADS, 0.3), atol=2e-5)


def test_causal_attention_sees_only_earlier_keys_in_both_paths():
    q, k, v = inputs(2, 200, 2, 200)  # more queries than one block: the mask follows the global row
    expected = reference(q, k, v, HEADS, 0.3, causal=True)
    fused = attention(jt.array(q), jt.array(k), jt.array(v), HEADS, 0.3, causal=True).numpy()
    generic = _attention_generic(jt.array(q), jt.array(k), jt.array(v), HEADS, 0.3, upcast=True, causal=True)
    np.testing.assert_allclose(fused, expected, atol=2e-5)
    np.testing.assert_allclose(generic.numpy(), expected, atol=2e-5)
    np.testing.assert_allclose(fused[:, 0], v[:, 0], atol=1e-6)  # the first query sees only the first key


def test_fused_kernel_is_used_on_cpu_with_onednn():
    assert fused_cpu_available()


def test_float16_inputs_give_float16_output_close_to_reference():
    q, k, v = inputs(2, 200, 2, 77)
    out = attention(jt.array(q).float16(), jt.array(k).float16(), jt.array(v).float16(), HEADS, 0.5, upcast=True)
    assert out.dtype == "float16"
    np.testing.assert_allclose(out.numpy().astype(np.float32), reference(q, k, v, HEADS, 0.5), atol=1e-2)


def test_bad_shapes_raise():
    q, k, v = inputs(2, 8, 3, 8)
    with pytest.raises(ValueError, match="batch"):
        attention(jt.array(q), jt.array(k), jt.array(v), HEADS, 1.0)
    with pytest.raises(ValueError, match="heads"):
        attention(jt.array(q), jt.array(k[:1]), jt.array(v[:1]), 3, 1.0)


def test_attention_module_keys_and_processor_hook():
    attn = build(architecture.attention(C, 8, HEADS, C // HEADS))
    assert sorted(attn.state_dict()) == ["to_k.weight", "to_out.0.bias", "to_out.0.weight", "to_q.weight",
                                         "to_v.weight"]
    assert tuple(attn.to_k.weight.shape) == (C, 8)
    seen = []

    class Recording(AttnProcessor):
        def __init__(self):
            self.kept = jt.zeros((3,))  # a processor's own Vars are not model parameters

        def __call__(self, attn, hidden_states, encoder_hidden_states=None):
            seen.append(encoder_hidden_states is not None)
            return super().__call__(attn, hidden_states, encoder_hidden_states)

    x, ctx = jt.array(inputs(1, 5, 1, 5)[0]), jt.zeros((1, 4, 8))
    plain = attn(x, ctx).numpy()
    attn.processor = Recording()
    assert len(attn.state_dict()) == 5
    np.testing.assert_array_equal(attn(x, ctx).numpy(), plain)
    assert seen == [True]


def test_generic_path_without_upcast_matches_reference():
    q, k, v = inputs(2, 200, 2, 77)
    out = _attention_generic(jt.array(q), jt.array(k), jt.array(v), HEADS, 0.3, upcast=False).numpy()
    np.testing.assert_allclose(out, reference(q, k, v, HEADS, 0.3), atol=2e-5)


def test_fp16_logits_are_scaled_before_they_are_rounded():
    """Without upcast (SD 2.1-base), fp16 logits must hold scale · q·kᵀ: here q·kᵀ ≈ 64 · 40 · 40 = 102400
    overflows fp16 (max 65504) while an eighth of it does not, so an unscaled product gives inf and NaN."""
    d, m = 64, 8
    q = np.full((1, 6, d), 40, np.float16)
    k = (np.full((1, m, d), 40, np.float32) * (1 + 0.01 * np.arange(m))[None, :, None]).astype(np.float16)
    v = np.random.default_rng(0).standard_normal((1, m, d)).astype(np.float16)
    out = _attention_generic(jt.array(q), jt.array(k), jt.array(v), 1, d ** -0.5, upcast=False)
    assert out.dtype == "float16"
    out = out.float32().numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, reference(q, k, v, 1, d ** -0.5), atol=2e-3)  # the last key wins
