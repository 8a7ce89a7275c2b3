"""Trainable LoRA on the UNet's attention projections: a low-rank path beside each frozen Linear.

peft's LoRA layer computes y = W·x + b + (α/r)·B·(A·x) with A (r × in) and B (out × r). Here the frozen
`nn.Linear` is called as it is (its weight is neither copied nor merged) and the low-rank path is added
to its output, so Jittor's autograd reaches A and B only. The LoRA rides in attention processors, which
the UNet already exposes for StyleID: the module tree and its state-dict keys stay untouched, and
`detach()` puts the previous processors back. Keys follow diffusers' LoRA files
(`unet.<attention path>.to_q.lora.down.weight` = A, `.lora.up.weight` = B), so `common.sd.lora` and
diffusers' `load_lora_weights` read what `state()` returns.
"""
from typing import Optional

import numpy as np

from common.jittor_env import load_jittor
from common.sd.attention_grad import attention_with_grad

jt = load_jittor()
nn = jt.nn

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def lora_key(attention_name: str, target: str, half: str) -> str:
    """The diffusers key of one LoRA half ("down" = A, "up" = B)."""
    return f"unet.{attention_name}.{target}.lora.{half}.weight"


def freeze(module) -> None:
    """Stop gradients at every parameter of `module` (the base model is never trained)."""
    for p in module.parameters():
        p.stop_grad()


class LoraLinear:
    """`base(x) + scale · (x·Aᵀ)·Bᵀ`: the frozen Linear plus its low-rank path, computed in float32."""

    def __init__(self, base, down, up, scale: float):
        self.base, self.down, self.up, self.scale = base, down, up, scale

    def __call__(self, x):
        low = nn.matmul_transpose(nn.matmul_transpose(x.float32(), self.down), self.up)
        if self.scale != 1.0:
            low = low * self.scale
        return self.base(x) + low.cast(x.dtype)


class LoraAttnProcessor:
    """The plain attention with LoRA on its four projections and an attention that carries a gradient."""

    def __init__(self, layers: dict):
        self.layers = layers  # target → LoraLinear

    def __call__(self, attn, hidden_states, encoder_hidden_states=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = self.layers["to_q"](hidden_states)
        k, v = self.layers["to_k"](context), self.layers["to_v"](context)
        out = attention_with_grad(q, k, v, attn.heads, attn.scale, attn.upcast)
        return self.layers["to_out.0"](out)


def _linear(attn, target: str):
    return attn.to_out[0] if target == "to_out.0" else getattr(attn, target)


class UNetLora:
    """Rank-r LoRA on every attention's to_q/to_k/to_v/to_out.0 (self and cross) of one UNet.

    `state` is {diffusers key: array}, e.g. a saved LoRA file's tensors or a checkpoint's; `params` are
    its float32 Vars in sorted key order (A then B of each projection), which the optimiser updates.
    The scale is α/r (α defaults to r: scale 1). `create` makes a fresh one.
    """

    def __init__(self, unet, state: dict, alpha: Optional[float] = None):
        self.unet = unet
        layers = unet.attention_layers()
        expected = {lora_key(n, t, h) for n in layers for t in TARGETS for h in ("down", "up")}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"LoRA state does not fit this UNet: {len(missing)} keys missing {missing[:2]}, "
                             f"{len(extra)} unknown {extra[:2]}")
        self.keys = sorted(state)
        self.params = [jt.array(np.ascontiguousarray(state[k], dtype=np.float32)) for k in self.keys]
        by_key = dict(zip(self.keys, self.params))
        self.rank = int(state[self.keys[0]].shape[0])  # the first key is a down (A) half: (r, in)
        self.scale = (self.rank if alpha is None else float(alpha)) / self.rank
        self._processors = {
            name: LoraAttnProcessor({t: LoraLinear(_linear(attn, t), by_key[lora_key(name, t, "down")],
                                                   by_key[lora_key(name, t, "up")], self.scale) for t in TARGETS})
            for name, attn in layers.items()}
        self._saved = None

    @classmethod
    def create(cls, unet, rank: int, rng: np.random.Generator, alpha: Optional[float] = None) -> "UNetLora":
        """A fresh LoRA (peft's "gaussian" init): A ~ N(0, (1/rank)²) drawn from `rng` in key order, B = 0."""
        shapes = {}
        for name, attn in unet.attention_layers().items():
            for target in TARGETS:
                out_features, in_features = _linear(attn, target).weight.shape
                shapes[lora_key(name, target, "down")] = (rank, in_features)
                shapes[lora_key(name, target, "up")] = (out_features, rank)
        state = {key: (rng.standard_normal(shape) / rank).astype(np.float32) if key.endswith(".down.weight")
                 else np.zeros(shape, np.float32) for key, shape in sorted(shapes.items())}
        return cls(unet, state, alpha)

    def attach(self) -> None:
        """Install the LoRA processors; the ones in place are kept for `detach`."""
        if self._saved is None:
            self._saved = {name: attn.processor for name, attn in self.unet.attention_layers().items()}
        self.unet.set_processors(self._processors)

    def detach(self) -> None:
        """Put back the processors that were in place before `attach`."""
        if self._saved is not None:
            self.unet.set_processors(self._saved)
            self._saved = None

    def state(self) -> dict:
        """{diffusers key: float32 array} of the current values."""
        return {k: v.numpy().astype(np.float32) for k, v in zip(self.keys, self.params)}
