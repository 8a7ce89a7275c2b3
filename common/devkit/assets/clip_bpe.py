"""CLIP's BPE vocabulary, rebuilt from OpenAI/OpenCLIP's merge list (bpe_simple_vocab_16e6.txt.gz).

SD 2.x's tokenizer folder (vocab.json + merges.txt) is this file's first 48,894 merges plus the byte
alphabet: rebuilding it here lets the tiny test checkpoint tokenize exactly like the real model without
shipping model files. Pure Python (no numpy, jittor or torch) so reference scripts can use it too.
"""
import gzip
import json
from pathlib import Path

BPE_GZ = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 48894  # 49408 - 2*256 byte symbols - 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table (bytes that print stay themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def clip_vocab_and_merges() -> tuple:
    """({token: id} with 49408 entries, [merge lines 'a b']) in CLIP's id order."""
    lines = gzip.open(BPE_GZ, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:NUM_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


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
