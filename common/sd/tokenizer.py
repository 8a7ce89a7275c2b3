"""CLIP's tokenizer via `tokenizers`, Jittor-free (the launch checks count prompt tokens with it).

It reads `vocab.json` + `merges.txt` (transformers 4's slow files) or, failing those, `tokenizer.json`
(all that transformers 5 saves).
"""
import json
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

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
