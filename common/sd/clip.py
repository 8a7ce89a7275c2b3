"""CLIP text encoder (transformers' CLIPTextModel) in Jittor, and CLIP's tokenizer via `tokenizers`.

Attribute names equal transformers 4's state-dict keys (`text_model.encoder.layers.0.self_attn.q_proj...`),
so a `text_encoder/model.safetensors` loads by walking names; transformers >= 5 saves the same tensors
without the `text_model.` prefix, and `rename_text_encoder_keys` accepts both, as transformers 5 does.
SD 1.x and 2.x condition on `last_hidden_state`, i.e. after `final_layer_norm`. The tokenizer lives in
the Jittor-free `common.sd.tokenizer` and is re-exported here. The encoder's layout is declared once, in
common/sd/architecture.py (`text_encoder`); the classes here are the forward passes.
"""
import numpy as np

from common.jittor_env import load_jittor
from common.sd import architecture
from common.sd.attention import attention
from common.sd.configs import text_encoder_key
from common.sd.layers import Declared
from common.sd.tokenizer import BOS, EOS, CLIPTokenizer  # noqa: F401 (re-exported)

jt = load_jittor()
nn = jt.nn


def rename_text_encoder_keys(state: dict) -> dict:
    """transformers >= 5's CLIPTextModel keys (`encoder.layers.0...`) -> ours (`text_model.encoder.layers.0...`);
    keys already prefixed, and any others, stay as they are."""
    return {text_encoder_key(k): v for k, v in state.items()}


def quick_gelu(x):
    return x * jt.sigmoid(1.702 * x)


_ACTIVATIONS = {"gelu": nn.gelu, "quick_gelu": quick_gelu}


class CLIPAttention(Declared):
    def execute(self, x):
        # Text: causal, token i sees tokens <= i; no padding mask (SD attends to pad positions too).
        # The vision tower (common/score/clip_vision.py) attends to every token.
        out = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, self.scale, upcast=True,
                        causal=self.causal)
        return self.out_proj(out)


class CLIPMLP(Declared):
    def execute(self, x):
        return self.fc2(_ACTIVATIONS[self.act](self.fc1(x)))


class CLIPEncoderLayer(Declared):
    def execute(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(Declared):
    def execute(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextEmbeddings(Declared):
    def execute(self, ids):
        return self.token_embedding(ids) + self.position_embedding.weight[:ids.shape[1]].unsqueeze(0)


class CLIPTextTransformer(Declared):
    def execute(self, ids):
        x = self.encoder(self.embeddings(ids))
        return self.final_layer_norm(x)


class CLIPTextModel(Declared):
    """ids (B, N<=max_position_embeddings) int32 -> last_hidden_state (B, N, hidden_size)."""

    def __init__(self, config: dict):
        super().__init__(architecture.text_encoder(config))

    def execute(self, ids):
        if not isinstance(ids, jt.Var):
            ids = jt.array(np.asarray(ids, dtype=np.int32))
        if ids.ndim != 2 or ids.shape[1] > self.config["max_position_embeddings"]:
            raise ValueError(f"text encoder takes ids (B, <= {self.config['max_position_embeddings']}), "
                             f"got {tuple(ids.shape)}")
        return self.text_model(ids)
