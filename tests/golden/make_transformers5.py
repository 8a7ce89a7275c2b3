"""Regenerate tests/golden/transformers5.npz with transformers >= 5 and a matching diffusers, in a venv of
their own (not the 4.40.2 reference venv):

    python3 -m venv .venv-ref5 && .venv-ref5/bin/pip install torch==2.13.0 "transformers>=5" "diffusers>=0.42" \
        safetensors numpy accelerate
    .venv-ref5/bin/python tests/golden/make_transformers5.py

transformers 5 saves CLIPTextModel without the `text_model.` key prefix and its tokenizer as tokenizer.json
only. This writes the tiny SD-2.1-shaped pipeline (common.devkit.tiny_weights, every tensor = tiny_param of
the key name as saved) with StableDiffusionPipeline.save_pretrained and records the folder as written: each
JSON file's text (tokenizer.json without its vocab and merges, checked equal to the assets' CLIP BPE), each
weight file's keys, shapes and dtypes (so a test rebuilds the very same tensors), the tokenizer's ids for the
prompts of tests/golden/clip.npz, the text encoder's hidden states and a guided DDIM run (pipeline_run.py),
all from the folder loaded back by the same libraries.
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "golden"))

import diffusers  # noqa: E402
import transformers  # noqa: E402

if int(transformers.__version__.split(".")[0]) < 5:
    sys.exit(f"make_transformers5.py needs transformers >= 5 (this venv has {transformers.__version__}); "
             "run it with .venv-ref5/bin/python (set-up in this file's docstring)")

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from common.devkit.assets.clip_bpe import clip_vocab_and_merges, write_tokenizer_folder  # noqa: E402
from common.devkit.tiny_weights import SCHEDULER, TEXT_ENCODER, UNET, VAE, tiny_param  # noqa: E402
from pipeline_run import reference_run  # noqa: E402

ENCODE = [0, 2, 3, 11]  # rows of clip.npz's prompts to encode (short, "!", contractions, long)


def kwargs(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}


def fill(module):
    module.load_state_dict({k: torch.from_numpy(tiny_param(k, v.shape)) for k, v in module.state_dict().items()})
    return module.eval()


def write_folder(folder: Path, tmp: Path):
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_folder(tmp / "tokenizer-in", pad_token="!"))
    pipe = StableDiffusionPipeline(
        vae=fill(AutoencoderKL(**kwargs(VAE))), unet=fill(UNet2DConditionModel(**kwargs(UNET))),
        text_encoder=fill(CLIPTextModel(CLIPTextConfig(**kwargs(TEXT_ENCODER)))), tokenizer=tokenizer,
        scheduler=DDIMScheduler(**kwargs(SCHEDULER)), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(folder)


def record_folder(folder: Path) -> dict:
    """{"files": {path: JSON text}, "weights": {path: {key: [shape, dtype]}}} of the written folder."""
    files, weights = {}, {}
    vocab, merges = clip_vocab_and_merges()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.endswith(".json"):
            text = path.read_text(encoding="utf-8")
            if rel == "tokenizer/tokenizer.json":
                data = json.loads(text)
                assert data["model"]["vocab"] == vocab, "tokenizer.json vocab differs from the assets' CLIP BPE"
                assert data["model"]["merges"] == [m.split(" ") for m in merges], "tokenizer.json merges differ"
                data["model"]["vocab"] = data["model"]["merges"] = None  # the test puts the assets' back
                text = json.dumps(data, ensure_ascii=False)
            files[rel] = text
        elif rel.endswith(".safetensors"):
            state = load_file(str(path))
            for key, value in state.items():
                assert np.array_equal(value, tiny_param(key, value.shape)), f"{rel}: {key} is not tiny_param"
            weights[rel] = {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}
        else:
            raise SystemExit(f"{rel}: unexpected file kind in the saved pipeline; teach the golden about it")
    keys = weights["text_encoder/model.safetensors"]
    assert not any(k.startswith("text_model.") for k in keys), "transformers 5 was expected to drop text_model."
    return {"files": files, "weights": weights}


def main():
    torch.manual_seed(0)
    prompts = np.load(ROOT / "tests" / "golden" / "clip.npz")["prompts"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-sd21-transformers5"
        write_folder(folder, Path(tmp))
        layout = record_folder(folder)
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                             return_tensors="np").input_ids.astype(np.int32)
        assert ids[0, :5].tolist() == [49406, 320, 2368, 49407, 0], "pad '!' should be id 0"
        with torch.no_grad():
            hidden = pipe.text_encoder(torch.from_numpy(ids[ENCODE].astype(np.int64))).last_hidden_state.numpy()
        run = reference_run(pipe)
    versions = {"transformers": transformers.__version__, "diffusers": diffusers.__version__,
                "torch": torch.__version__}
    out = {"versions": np.array(json.dumps(versions)), "files": np.array(json.dumps(layout["files"])),
           "weights": np.array(json.dumps(layout["weights"])), "prompts": np.array(prompts), "ids": ids,
           "encode_rows": np.array(ENCODE), "hidden": hidden, **{f"pipe_{k}": v for k, v in run.items()}}
    path = ROOT / "tests" / "golden" / "transformers5.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes) from {versions}: files {sorted(layout['files'])}, "
          f"weights {sorted(layout['weights'])}")


if __name__ == "__main__":
    main()
