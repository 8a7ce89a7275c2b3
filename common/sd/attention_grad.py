"""Attention that carries a gradient, for training.

The fused CPU kernel of `common.sd.attention` has no backward (a `jt.code` op without one passes no
gradient at all), so training uses this instead.
"""
from common.sd.attention import _attention_generic


def attention_with_grad(q, k, v, heads, scale, upcast=False):
    """softmax(scale · q kᵀ) v per head, differentiable in q, k and v (shapes as `attention`)."""
    return _attention_generic(q, k, v, heads, scale, upcast)
