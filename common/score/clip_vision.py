"""transformers' CLIPModel in Jittor: the ViT image tower and its projection, the engine's text tower and
its projection, and `logit_scale` (the score's clip_r_score).

Attribute names equal the checkpoint's keys (`vision_model.encoder.layers.0.self_attn.q_proj.weight`,
`vision_model.pre_layrnorm.weight` [sic], `visual_projection.weight`, `text_model.*`,
`text_projection.weight`, `logit_scale`). The vision tower: a bias-free patch conv, a learned class
embedding first, learned position embeddings (the input must be `image_size` square: no interpolation,
as transformers by default), `pre_layrnorm`, the engine's CLIP encoder layers without the causal mask,
`post_layernorm` of the class token. The text side pools the final-layernormed hidden state at the first
end-of-text token: with the legacy `eos_token_id` 2 of older configs (clip-vit-large-patch14) transformers
takes `argmax(input_ids)`, i.e. the first highest id, which is the first `<|endoftext|>`; otherwise the
first position of `eos_token_id`. Text attention is causal, so that pooled state does not depend on the
padding after it. Embeddings are L2-normalised; logits = exp(logit_scale) * image · text.
"""
import numpy as np

from common.jittor_env import load_jittor
from common.sd.architecture import clip_encoder, clip_text_transformer
from common.sd.clip import _ACTIVATIONS
from common.sd.configs import text_config
from common.sd.layers import LayerNorm, build

jt = load_jittor()
nn = jt.nn

# transformers' CLIPVisionConfig / CLIPConfig defaults, for keys a config.json may omit.
VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
                   "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
TEXT_EOS_DEFAULT = 49407
PROJECTION_DEFAULT = 512


def vision_config(config: dict) -> dict:
    """The vision config (the keys we read) with defaults; ValueError naming the key we cannot build."""
    cfg = {**VISION_DEFAULTS, **{k: v for k, v in config.items() if k in VISION_DEFAULTS}}
    if cfg["hidden_act"] not in _ACTIVATIONS:
        raise ValueError(f"CLIP vision config: hidden_act={cfg['hidden_act']!r} is not supported "
                         f"(supported: {', '.join(_ACTIVATIONS)})")
    for key in ("hidden_size", "num_attention_heads", "image_size", "patch_size"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] <= 0:
            raise ValueError(f"CLIP vision config: {key}={cfg[key]!r} is not a positive integer")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ValueError("CLIP vision config: hidden_size must be divisible by num_attention_heads")
    return cfg


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, cfg: dict):
        dim, p = cfg["hidden_size"], cfg["patch_size"]
        self.image_size = cfg["image_size"]
        self.class_embedding = jt.zeros((dim,), "float32")
        self.patch_embedding = nn.Conv2d(cfg["num_channels"], dim, p, stride=p, bias=False)
        self.position_embedding = nn.Embedding((cfg["image_size"] // p) ** 2 + 1, dim)

    def execute(self, pixels):
        b, _, h, w = pixels.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"CLIP vision tower takes {self.image_size}x{self.image_size} pixels, got {h}x{w}")
        x = self.patch_embedding(pixels)
        x = x.reshape((b, x.shape[1], -1)).transpose((0, 2, 1))
        x = jt.concat([self.class_embedding.reshape((1, 1, -1)).broadcast((b, 1, x.shape[2])), x], dim=1)
        return x + self.position_embedding.weight.unsqueeze(0)


class CLIPVisionTransformer(nn.Module):
    """pixel values (B, 3, S, S) -> pooled (B, hidden_size): post_layernorm of the class token."""

    def __init__(self, cfg: dict):
        self.embeddings = CLIPVisionEmbeddings(cfg)
        self.pre_layrnorm = LayerNorm(cfg["hidden_size"], cfg["layer_norm_eps"])
        self.encoder = build(clip_encoder(cfg, causal=False))
        self.post_layernorm = LayerNorm(cfg["hidden_size"], cfg["layer_norm_eps"])

    def execute(self, pixels):
        x = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
        return self.post_layernorm(x[:, 0])


def first_eot(ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """Per row, the position transformers pools at (see the module docstring)."""
    ids = np.asarray(ids)
    return ids.argmax(axis=1) if eos_token_id == 2 else (ids == eos_token_id).argmax(axis=1)


class CLIPModel(nn.Module):
    """`image_embeds(pixels)` and `text_embeds(ids)`: projected, L2-normalised (B, projection_dim) float32."""

    def __init__(self, config: dict):
        text = config.get("text_config") or {}
        vision = config.get("vision_config") or {}
        if not isinstance(text, dict) or not isinstance(vision, dict):
            raise ValueError("CLIP config: text_config and vision_config must be JSON objects")
        self.text_config, self.vision_config = text_config(text), vision_config(vision)
        self.eos_token_id = text.get("eos_token_id", TEXT_EOS_DEFAULT)
        projection = config.get("projection_dim", PROJECTION_DEFAULT)
        self.text_model = build(clip_text_transformer(self.text_config))
        self.vision_model = CLIPVisionTransformer(self.vision_config)
        self.visual_projection = nn.Linear(self.vision_config["hidden_size"], projection, bias=False)
        self.text_projection = nn.Linear(self.text_config["hidden_size"], projection, bias=False)
        self.logit_scale = jt.array(np.float32(config.get("logit_scale_init_value", 2.6592)))

    @staticmethod
    def _unit(x):
        return x / jt.sqrt((x * x).sum(dim=-1, keepdims=True))

    def image_embeds(self, pixels):
        if not isinstance(pixels, jt.Var):
            pixels = jt.array(np.asarray(pixels, dtype=np.float32))
        return self._unit(self.visual_projection(self.vision_model(pixels)))

    def text_embeds(self, ids):
        ids = np.asarray(ids, dtype=np.int32)
        if ids.ndim != 2 or ids.shape[1] > self.text_config["max_position_embeddings"]:
            raise ValueError(f"CLIP text tower takes ids (B, <= {self.text_config['max_position_embeddings']}), "
                             f"got {ids.shape}")
        hidden = self.text_model(jt.array(ids))
        pooled = hidden[jt.arange(ids.shape[0]), jt.array(first_eot(ids, self.eos_token_id).astype(np.int32))]
        return self._unit(self.text_projection(pooled))

    def logits_per_image(self, image_embeds, text_embeds):
        """(images, texts) exp(logit_scale) · cosine."""
        return jt.matmul(image_embeds, text_embeds.transpose((1, 0))) * jt.exp(self.logit_scale)
