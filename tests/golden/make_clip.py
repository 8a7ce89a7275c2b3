"""Regenerate tests/golden/clip.npz with transformers (reference venv): .venv-ref/bin/python tests/golden/make_clip.py

Stores transformers' CLIPTokenizer ids (slow and fast must agree) for SD 2.x (pad "!") and SD 1.x (pad
<|endoftext|>) folders built from common/devkit/assets, and the tiny CLIPTextModel (common.devkit.tiny_weights.TEXT_ENCODER
filled by tiny_param) hidden states for a few prompts, with the reference key/shape list.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPTokenizerFast  # noqa: E402

from common.devkit.assets.clip_bpe import write_tokenizer_folder  # noqa: E402
from common.devkit.tiny_weights import TEXT_ENCODER, tiny_param  # noqa: E402

LONG = ("a highly detailed oil painting of a lighthouse on a rocky cliff at sunset, crashing waves, "
        "seagulls, dramatic clouds, golden hour light, by an old master, trending on artstation, 8k, "
        "ultra realistic, volumetric fog, sharp focus, intricate details, cinematic composition, "
        "wide angle lens, bokeh, masterpiece, award winning photograph, style_07 style_07 style_07")
PROMPTS = [
    "a cat",
    "A  Cat in style_00",
    "a painting of a dog, in style_07!",
    "Hello, World!! It's 3:45pm; don't: you'll we've I'm they'd, she's",
    "   leading and trailing   spaces\tand\ttabs\nnewline   ",
    "UPPER lower MiXeD 12345 007 3.14",
    "!",
    "",
    "symbols#and$signs & more (parens) [brackets] {braces} a-b_c/d\\e ~~ ...",
    "<|startoftext|>a photo<|endoftext|> of style_99",
    "café naïve résumé",
    LONG,
    LONG + ", " + LONG,
]
ENCODE = [PROMPTS[0], PROMPTS[2], PROMPTS[3], LONG]


def tokenizer_ids(folder):
    slow, fast = CLIPTokenizer.from_pretrained(folder), CLIPTokenizerFast.from_pretrained(folder)
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="np")
    ids_slow, ids_fast = slow(PROMPTS, **kw).input_ids, fast(PROMPTS, **kw).input_ids
    bad = [p for p, a, b in zip(PROMPTS, ids_slow, ids_fast) if not np.array_equal(a, b)]
    if bad:
        raise SystemExit(f"slow and fast CLIPTokenizer disagree on {bad}")
    return ids_fast.astype(np.int32)


def main():
    out = {"prompts": np.array(PROMPTS)}
    with tempfile.TemporaryDirectory() as tmp:
        out["ids_sd2"] = tokenizer_ids(write_tokenizer_folder(Path(tmp) / "sd2", pad_token="!"))
        out["ids_sd1"] = tokenizer_ids(write_tokenizer_folder(Path(tmp) / "sd1", pad_token="<|endoftext|>"))
    assert out["ids_sd2"][0, :5].tolist() == [49406, 320, 2368, 49407, 0]

    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT_ENCODER.items() if k != "architectures"}))
    state = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    model.load_state_dict({k: torch.from_numpy(tiny_param(k, v.shape)) for k, v in state.items()}, strict=False)
    model.eval()
    ids = out["ids_sd2"][[PROMPTS.index(p) for p in ENCODE]]
    with torch.no_grad():
        hidden = model(input_ids=torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
    out.update(encode_ids=ids, hidden=hidden.astype(np.float32), keys=np.array(list(state)),
               shapes=np.array([",".join(map(str, v.shape)) for v in state.values()]))
    path = ROOT / "tests" / "golden" / "clip.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes): {len(state)} tensors, hidden {hidden.shape}")


if __name__ == "__main__":
    main()
