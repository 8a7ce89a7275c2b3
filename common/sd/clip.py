"""CLIP text encoder (transformers' CLIPTextModel) in Jittor, and CLIP's tokenizer via `tokenizers`.

Attribute names equal transformers 4's state-dict keys (`text_model.encoder.layers.0.self_attn.q_proj...`),
so a `text_encoder/model.safetensors` loads by walking names; transformers >= 5 saves the same tensors
without the `text_model.` prefix, and `rename_text_encoder_keys` accepts both, as transformers 5 does.
SD 1.x and 2.x condition on `last_hidden_state`, i.e. after `final_layer_norm`. The tokenizer reads
`vocab.json` + `merges.txt` (transformers 4's slow files) or, failing those, `tokenizer.json` (all that
transformers 5 saves). The encoder's layout is declared once, in common/sd/architecture.py
(`text_encoder`); the classes here are the forward passes.
"""
import json
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from common.jittor_env import load_jittor
from common.sd import architecture
from common.sd.attention import attention
from common.sd.configs import text_encoder_key
from common.sd.layers import Declared

jt = load_jittor()
nn = jt.nn

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's word split: specials are matched before this runs; contractions, letter runs, single digits,
# other non-space runs. Whitespace is dropped.
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix: restore the tokenizer file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object; fix: restore the tokenizer file")
    return data


def _bpe_of_tokenizer_json(path: Path) -> tuple:
    """(vocab, merges) of a `tokenizers` BPE file; merges are "a b" strings or [a, b] pairs by version."""
    model = _read_json(path).get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict) \
            or not isinstance(model.get("merges"), list):
        raise ValueError(f"{path}: not a BPE tokenizer file (needs model.type BPE, vocab, merges); "
                         "fix: restore the tokenizer file")
    merges = []
    for merge in model["merges"]:
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise ValueError(f"{path}: model.merges holds {merge!r}, not an 'a b' string or [a, b] pair; "
                             "fix: restore the tokenizer file")
        merges.append(tuple(pair))
    return model["vocab"], merges


class CLIPTokenizer:
    """Prompts -> (B, max_length) int32 ids, as transformers' CLIPTokenizer(Fast) with padding="max_length"
    and truncation: `<|startoftext|>` + first max_length-2 tokens + `<|endoftext|>`, then the pad id."""

    def __init__(self, vocab: dict, merges: list, pad_token: str = EOS, max_length: int = 77):
        for name in (BOS, EOS, pad_token):
            if name not in vocab:
                raise ValueError(f"tokenizer vocabulary lacks {name!r}; fix: use CLIP's vocab.json")
        tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=EOS, continuing_subword_prefix="",
                            end_of_word_suffix="</w>", fuse_unk=False))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        # transformers registers the pad token as a special token: a literal "!" (SD 2.x's pad) becomes id 0.
        tok.add_special_tokens([AddedToken(pad_token, normalized=False, special=True),
                                AddedToken(BOS, special=True), AddedToken(EOS, special=True)])
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
        tok.enable_truncation(max_length)
        tok.enable_padding(length=max_length, pad_id=vocab[pad_token], pad_token=pad_token)
        self.tokenizer, self.max_length, self.pad_token_id = tok, max_length, vocab[pad_token]

    @classmethod
    def from_folder(cls, path) -> "CLIPTokenizer":
        """Read a diffusers `tokenizer/` folder; special_tokens_map.json's pad token wins over the config's."""
        path = Path(path)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            vocab = _read_json(path / "vocab.json")
            lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
            # As transformers' CLIPTokenizer: skip the "#version" header, read at most 49152 - 256 - 2 merges.
            merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1] if line]
        elif (path / "tokenizer.json").is_file():
            vocab, merges = _bpe_of_tokenizer_json(path / "tokenizer.json")
        else:
            missing = "merges.txt" if (path / "vocab.json").is_file() else "vocab.json"
            raise FileNotFoundError(f"{path / missing}: missing (and no tokenizer.json); fix: point at a CLIP "
                                    "tokenizer folder")
        settings = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (path / name).is_file():
                settings.update(_read_json(path / name))
        pad = settings.get("pad_token", EOS)
        pad = pad["content"] if isinstance(pad, dict) else pad
        max_length = int(settings.get("model_max_length", 77))
        return cls(vocab, merges, pad_token=pad or EOS, max_length=max_length if max_length <= 4096 else 77)

    @classmethod
    def from_bpe(cls, path, pad_token: str) -> "CLIPTokenizer":
        """Build from CLIP's gzipped merge list (open_clip's `bpe_simple_vocab_16e6.txt.gz`), as SD's tokenizer
        folders are built from it; `pad_token`: `!` for SD 2.x, `<|endoftext|>` for SD 1.x."""
        from common.sd.clip_vocab import vocab_and_merges
        vocab, merges = vocab_and_merges(path)
        return cls(vocab, [tuple(m.split()) for m in merges], pad_token=pad_token)

    def __call__(self, prompts: list, longest: bool = False) -> np.ndarray:
        """(B, max_length) ids; `longest` cuts the padding after the longest prompt's last token, as
        transformers' `padding=True` pads (truncation stays at max_length)."""
        if isinstance(prompts, str):
            raise TypeError("CLIPTokenizer takes a list of prompts, not one string")
        encodings = self.tokenizer.encode_batch(list(prompts))
        width = max((sum(e.attention_mask) for e in encodings), default=0) if longest else self.max_length
        return np.array([e.ids[:width] for e in encodings], dtype=np.int32).reshape((len(encodings), width))


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
