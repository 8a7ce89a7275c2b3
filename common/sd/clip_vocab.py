"""CLIP's BPE vocabulary rebuilt from OpenAI/OpenCLIP's merge list (`bpe_simple_vocab_16e6.txt.gz`).

SD's tokenizer folder (vocab.json + merges.txt) is that file's first 48,894 merges plus the byte
alphabet, in this id order; a single-file checkpoint ships no tokenizer, so the one `open_clip` installs
serves (docs/engine.md §13). Pure Python (no numpy, jittor or torch): reference scripts use it too.
"""
import gzip

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


def vocab_and_merges(bpe_gz) -> tuple:
    """({token: id} with 49408 entries, [merge lines 'a b']) in CLIP's id order, from the gzipped merge list."""
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1:NUM_MERGES + 1]
    if len(merges) != NUM_MERGES or not all(len(m.split()) == 2 for m in merges):
        raise ValueError(f"{bpe_gz}: expected a header and at least {NUM_MERGES} 'a b' merge lines (CLIP's "
                         "bpe_simple_vocab_16e6.txt.gz); point model.tokenizer at that file")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges
