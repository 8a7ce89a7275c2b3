"""StyleID's self-attention processors (docs/styleid.md §5-6), installed on the configured `attn1` layers only.

`RecordProcessor` is plain self-attention that also keeps some of its projections (the style's K and V,
the content's Q) under the clock's timestep. `InjectProcessor` attends with the query preserved from the
content, q̃ = γ·Qᶜ(t) + (1−γ)·q, to the style's K and V recorded at the same t (batch 1, broadcast over
the batch), with the logits multiplied by the temperature T. It computes no to_k/to_v, and no to_q at γ = 1.
"""
from typing import Iterable

from common.sd.attention import attention

from consumer.features import FeatureStore, StepClock


def hook_name(layer: str) -> str:
    """`up_blocks.3.attentions.2` -> the name of its self-attention module."""
    return f"{layer}.transformer_blocks.0.attn1"


def _project(attn, hidden_states):
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


class RecordProcessor:
    """Plain self-attention that records the projections named in `kinds` ("q", "k", "v") at clock.t."""

    def __init__(self, name: str, clock: StepClock, store: FeatureStore, kinds: Iterable[str]):
        self.name, self.clock, self.store, self.kinds = name, clock, store, tuple(kinds)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None):
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: StyleID hooks self-attention (attn1) only")
        t = self.clock.now()
        q, k, v = _project(attn, hidden_states)
        for kind, value in zip("qkv", (q, k, v)):
            if kind in self.kinds:
                self.store.put(self.name, kind, t, value.stop_grad())
        return attn.to_out[0](attention(q, k, v, attn.heads, attn.scale, attn.upcast))


class InjectProcessor:
    """Attention with the content's preserved query and the style's keys and values, logits × T."""

    def __init__(self, name: str, clock: StepClock, content: FeatureStore, style: FeatureStore,
                 gamma: float, temperature: float):
        self.name, self.clock, self.content, self.style = name, clock, content, style
        self.gamma, self.temperature = float(gamma), float(temperature)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None):
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: StyleID hooks self-attention (attn1) only")
        t = self.clock.now()
        q = self.content.get(self.name, "q", t)
        if self.gamma < 1.0:
            current = attn.to_q(hidden_states)
            q = (self.gamma * q + (1.0 - self.gamma) * current).astype(current.dtype)
        k, v = self.style.get(self.name, "k", t), self.style.get(self.name, "v", t)
        out = attention(q, k, v, attn.heads, attn.scale * self.temperature, attn.upcast)
        return attn.to_out[0](out)
