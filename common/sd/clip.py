"""CLIP text encoder (transformers' CLIPTextModel) in Jittor, and CLIP's tokenizer via `tokenizers`.

Attribute names equal transformers 4's state-dict keys (`text_model.encoder.layers.0.self_attn.q_proj...`),
so a `text_encoder/model.safetensors` loads by walking names; transformers >= 5 saves the same tensors
without the `text_model.` prefix, and `rename_text_encoder_keys` accepts both, as transformers 5 does.
SD 1.x and 2.x condition on `last_hidden_state`, i.e. after `final_layer_norm`. The tokenizer lives in
the Jittor-free `common.sd.tokenizer` and is re-exported here.
"""
import numpy as np

from common.jittor_env import load_jittor
from common.sd.attention import attention
from common.sd.configs import text_config, text_encoder_key
from common.sd.layers import LayerNorm
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


class CLIPAttention(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool = True):
        self.heads, self.scale, self.causal = heads, (dim // heads) ** -0.5, causal
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def execute(self, x):
        # Text: causal, token i sees tokens <= i; no padding mask (SD attends to pad positions too).
        # The vision tower (common/score/clip_vision.py) attends to every token.
        out = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, self.scale, upcast=True,
                        causal=self.causal)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act):
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), act

    def execute(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: dict, act, causal: bool = True):
        dim, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.layer_norm1 = LayerNorm(dim, eps)
        self.self_attn = CLIPAttention(dim, cfg["num_attention_heads"], causal)
        self.layer_norm2 = LayerNorm(dim, eps)
        self.mlp = CLIPMLP(dim, cfg["intermediate_size"], act)

    def execute(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: dict, act, causal: bool = True):
        self.layers = nn.ModuleList([CLIPEncoderLayer(cfg, act, causal) for _ in range(cfg["num_hidden_layers"])])

    def execute(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, cfg: dict):
        self.token_embedding = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.position_embedding = nn.Embedding(cfg["max_position_embeddings"], cfg["hidden_size"])

    def execute(self, ids):
        return self.token_embedding(ids) + self.position_embedding.weight[:ids.shape[1]].unsqueeze(0)


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: dict, act):
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg, act)
        self.final_layer_norm = LayerNorm(cfg["hidden_size"], cfg["layer_norm_eps"])

    def execute(self, ids):
        x = self.encoder(self.embeddings(ids))
        return self.final_layer_norm(x)


class CLIPTextModel(nn.Module):
    """ids (B, N<=max_position_embeddings) int32 -> last_hidden_state (B, N, hidden_size)."""

    def __init__(self, config: dict):
        cfg = text_config(config)
        self.config = cfg
        self.text_model = CLIPTextTransformer(cfg, _ACTIVATIONS[cfg["hidden_act"]])

    def execute(self, ids):
        if not isinstance(ids, jt.Var):
            ids = jt.array(np.asarray(ids, dtype=np.int32))
        if ids.ndim != 2 or ids.shape[1] > self.config["max_position_embeddings"]:
            raise ValueError(f"text encoder takes ids (B, <= {self.config['max_position_embeddings']}), "
                             f"got {tuple(ids.shape)}")
        return self.text_model(ids)
