"""Trainable LoRA: a low-rank path beside each frozen Linear or Conv2d of the UNet (and the text encoder).

peft's LoRA layer computes y = base(x) + (α/r)·B(A(x)): for a Linear, A (r × in) and B (out × r); for a
Conv2d, A is a conv with the base's kernel, stride and padding (r × in × kh × kw) and B a 1x1 conv
(out × r × 1 × 1). Here the frozen module is called as it is (its weight is neither copied nor merged)
and the low-rank path is added to its output, so Jittor's autograd reaches A and B only. `attach()`
installs the path as the module's own `execute` (the module tree and its state-dict keys stay untouched)
and swaps in attentions that carry a gradient (the fused inference kernels have no backward); `detach()`
puts everything back. Modules are chosen as peft's `target_modules` chooses them: a module whose path is
a target or ends with "." + a target. Keys are the ones diffusers' DreamBooth script saves (`lora_key`:
`unet.<attention>.to_q.lora.down.weight` = A, `.lora.up.weight` = B, other modules peft's `lora_A` /
`lora_B`, the text encoder's `lora_linear_layer`), so `common.sd.lora` and diffusers' `load_lora_weights`
read what `file_state()` returns.
"""
from typing import Dict, Optional

import numpy as np

from common.jittor_env import load_jittor
from common.sd.attention import _attention_generic
from common.sd.attention_grad import attention_with_grad

jt = load_jittor()
nn = jt.nn

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the UNet's attention projections (the default)
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # the CLIP text encoder's, as diffusers trains them


def lora_key(model: str, module: str, half: str) -> str:
    """The key of one LoRA half ("down" = A, "up" = B) as diffusers' train_dreambooth_lora.py saves peft's
    (convert_state_dict_to_diffusers): `lora_linear_layer.down` for the text encoder's attention,
    `lora.down` for the UNet's, and peft's own `lora_A` for every other module."""
    if model == "text_encoder" and module.endswith(tuple("." + t for t in TEXT_TARGETS)):
        return f"{model}.{module}.lora_linear_layer.{half}.weight"
    if module.endswith(tuple("." + t for t in TARGETS)):
        return f"{model}.{module}.lora.{half}.weight"
    return f"{model}.{module}.lora_{'A' if half == 'down' else 'B'}.weight"


def lora_half(key: str) -> str:
    """"down" (A) or "up" (B): which half a `lora_key` names."""
    return "down" if key.endswith((".down.weight", ".lora_A.weight")) else "up"


def freeze(module) -> None:
    """Stop gradients at every parameter of `module` (the base model is never trained)."""
    for p in module.parameters():
        p.stop_grad()


def _module_at(model, path: str):
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def target_modules(model, targets) -> Dict[str, object]:
    """{path: module} of the model's Linear and Conv2d layers that peft's `target_modules` would pick."""
    found = {}
    for key in model.state_dict():
        path = key[:-len(".weight")] if key.endswith(".weight") else None
        if path and any(path == t or path.endswith("." + t) for t in targets):
            module = _module_at(model, path)
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                found[path] = module
    return dict(sorted(found.items()))


def lora_shapes(module, rank: int) -> tuple:
    """(A shape, B shape) of a rank-r LoRA on a Linear or Conv2d module."""
    weight = tuple(module.weight.shape)
    if len(weight) == 4:
        return (rank, weight[1]) + weight[2:], (weight[0], rank, 1, 1)
    return (rank, weight[1]), (weight[0], rank)


class LowRank:
    """`base(x) + scale · B(A(x))` with the low-rank path in float32; installed as the module's `execute`."""

    def __init__(self, module, down, up, scale: float):
        self.module, self.down, self.up, self.scale = module, down, up, scale

    def __call__(self, x):
        if self.down.ndim == 4:
            m = self.module
            low = nn.conv2d(nn.conv2d(x.float32(), self.down, None, m.stride, m.padding, m.dilation), self.up)
        else:
            low = nn.matmul_transpose(nn.matmul_transpose(x.float32(), self.down), self.up)
        if self.scale != 1.0:
            low = low * self.scale
        return type(self.module).execute(self.module, x) + low.cast(x.dtype)


class GradAttnProcessor:
    """The UNet's plain attention through its (maybe LoRA) projections, with an attention that has a backward."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(context), attn.to_v(context)
        out = attention_with_grad(q, k, v, attn.heads, attn.scale, attn.upcast)
        return attn.to_out[0](out)


class GradTextAttention:
    """A CLIP attention's forward in plain Jittor ops (causal, float32), so gradients reach its projections."""

    def __init__(self, attn):
        self.attn = attn

    def __call__(self, x):
        a = self.attn
        q, k, v = a.q_proj(x), a.k_proj(x), a.v_proj(x)
        out = _attention_generic(q.float32(), k.float32(), v.float32(), a.heads, a.scale, True, a.causal)
        return a.out_proj(out.cast(x.dtype))


class Lora:
    """A LoRA over modules of named models ({"unet": ..., "text_encoder": ...}).

    `state` is {diffusers key: array} (a checkpoint's, or a file's); it must cover exactly the modules
    `targets` picks in each model. `params` are its float32 Vars in sorted key order, which the optimiser
    updates. Each model's scale is alpha/rank (`alphas[model]`, None: alpha = rank, scale 1).
    """

    def __init__(self, models: dict, targets: dict, state: dict, alphas: Optional[dict] = None):
        self.models = models
        modules = {(name, path): module for name, t in targets.items()
                   for path, module in target_modules(models[name], t).items()}
        expected = {lora_key(m, p, h) for m, p in modules for h in ("down", "up")}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"LoRA state does not fit these models: {len(missing)} keys missing {missing[:2]}, "
                             f"{len(extra)} unknown {extra[:2]}")
        self.keys = sorted(state)
        self.params = [jt.array(np.ascontiguousarray(state[k], dtype=np.float32)) for k in self.keys]
        by_key = dict(zip(self.keys, self.params))
        self.scales = {}
        self._patches = {}
        for (name, path), module in modules.items():
            down, up = by_key[lora_key(name, path, "down")], by_key[lora_key(name, path, "up")]
            rank = int(down.shape[0])
            alpha = (alphas or {}).get(name)
            self.scales[name] = (rank if alpha is None else float(alpha)) / rank
            self._patches[module] = LowRank(module, down, up, self.scales[name])
        self._saved = None

    @classmethod
    def create(cls, models: dict, targets: dict, ranks: dict, rng: np.random.Generator,
               alphas: Optional[dict] = None) -> "Lora":
        """A fresh LoRA (peft's "gaussian" init): A ~ N(0, (1/rank)²) drawn from `rng` in key order, B = 0."""
        shapes = {}
        for name, t in targets.items():
            for path, module in target_modules(models[name], t).items():
                shapes[lora_key(name, path, "down")], shapes[lora_key(name, path, "up")] = \
                    lora_shapes(module, ranks[name])
        state = {key: (rng.standard_normal(shape) / int(shape[0])).astype(np.float32)
                 if lora_half(key) == "down" else np.zeros(shape, np.float32)
                 for key, shape in sorted(shapes.items())}
        return cls(models, targets, state, alphas)

    def attach(self) -> None:
        """Install the low-rank paths and the attentions with a backward; what was in place is kept."""
        if self._saved is not None:
            return
        unet = self.models["unet"]
        self._saved = {name: attn.processor for name, attn in unet.attention_layers().items()}
        unet.set_processors({name: GradAttnProcessor() for name in self._saved})
        for module, patch in self._patches.items():
            module.execute = patch
        text = self.models.get("text_encoder")
        if text is not None and any(k.startswith("text_encoder.") for k in self.keys):
            for layer in text.text_model.encoder.layers:
                layer.self_attn.execute = GradTextAttention(layer.self_attn)

    def detach(self) -> None:
        """Put back the modules' own forward and the attention processors of before `attach`."""
        if self._saved is None:
            return
        self.models["unet"].set_processors(self._saved)
        self._saved = None
        for module in self._patches:
            module.__dict__.pop("execute", None)
        text = self.models.get("text_encoder")
        if text is not None:
            for layer in text.text_model.encoder.layers:
                layer.self_attn.__dict__.pop("execute", None)

    def state(self) -> dict:
        """{diffusers key: float32 array} of the current values (what a checkpoint holds)."""
        return {k: v.numpy().astype(np.float32) for k, v in zip(self.keys, self.params)}

    def file_state(self) -> dict:
        """The state as a LoRA file holds it: diffusers' files carry no alpha (alpha = rank), so a scale
        other than 1 is folded into each B (up) matrix."""
        state = self.state()
        for key in state:
            scale = self.scales[key.split(".", 1)[0]]
            if lora_half(key) == "up" and scale != 1.0:
                state[key] = (state[key] * np.float32(scale)).astype(np.float32)
        return state
