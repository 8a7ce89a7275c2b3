"""CLIP's BPE vocabulary, rebuilt from OpenAI/OpenCLIP's merge list (bpe_simple_vocab_16e6.txt.gz).

SD 2.x's tokenizer folder (vocab.json + merges.txt) is this file's first 48,894 merges plus the byte
alphabet: rebuilding it here lets the tiny test checkpoint tokenize exactly like the real model without
shipping model files. Pure Python (no numpy, jittor or torch) so reference scripts can use it too.
"""
import json
from pathlib import Path

from common.sd.clip_vocab import BOS, EOS, NUM_MERGES, bytes_to_unicode, vocab_and_merges  # noqa: F401

BPE_GZ = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")


def clip_vocab_and_merges() -> tuple:
    """({token: id} with 49408 entries, [merge lines 'a b']) in CLIP's id order."""
    return vocab_and_merges(BPE_GZ)


def write_tokenizer_folder(folder, pad_token: str = "!") -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json as SD 2.1's hub folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    # Same bytes as transformers' CLIPTokenizer.save_pretrained.
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, **special, "pad_token": EOS}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")
    return folder
