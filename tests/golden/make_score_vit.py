"""Regenerate tests/golden/score_vit.npz with the checker's libraries:
/work/venv-score/bin/python tests/golden/make_score_vit.py   (transformers 4.57, PyTorch CPU)

The DINOv2 and CLIP folders are the ones `common.devkit.score_weights_vit` writes (small configs, real
processors and tokenizer); transformers loads them with AutoModel/AutoImageProcessor and
CLIPModel/CLIPProcessor as the checker does, strictly (no missing or unexpected keys), and their sha256
is stored so the test can prove it loads the very same bytes. A few synthetic images of different sizes,
aspect ratios and modes (stored as arrays; both sides write the same PNGs) exercise resize, crop and
the RGB conversion. Stored: pixel values (as their uint8 levels), DINOv2 pooler outputs, CLIP image
and text embeddings, the tokenizer's ids, torch's bicubic resize of a grid, the metrics computed as the
checker computes them (dino similarity; clip_r probabilities and top-5 hits for a small word list and
for the checker's own list, read in place, never stored), and the real architectures' key/shape listings.
"""
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor  # noqa: E402

from transformers import CLIPConfig, Dinov2Config  # noqa: E402

from common.devkit.score_weights_vit import CLIP_LARGE, DINO_BASE, write_clip, write_dino  # noqa: E402

WORDS_FILE = ROOT.parent / "shared" / "data" / "clip_r_prompts.txt"
SMALL_WORDS = ["Cat", "a red cat", "Dog", "Watch", "watch", "Ice cream", "tree", "house", "boat", "lion", "car",
               "apple", "river", "bird", "chair", "moon"]
# name, (width, height), PIL mode: landscape, portrait smaller than the crops, square grey, RGBA
IMAGES = [("A red Cat.v1.png", (300, 200), "RGB"), ("dog.png", (170, 250), "RGB"),
          ("Ice cream.png", (256, 256), "L"), ("Tall tree.png", (230, 330), "RGBA")]
N_GEN = 2  # the first images play the generated images, the rest the references


def synthetic(index: int, size: tuple, mode: str) -> np.ndarray:
    """Colour waves (periods of 5 to 40 pixels) and a hard-edged block: resize and crop errors show, and the
    npz stays small."""
    rng = np.random.default_rng(100 + index)
    w, h = size
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    waves = [127 + 100 * np.sin(x / rng.uniform(5, 40) + y / rng.uniform(5, 40) + rng.uniform(0, 6))
             for _ in range(channels)]
    pixels = np.clip(np.stack(waves, axis=-1).round(), 0, 255).astype(np.uint8)
    pixels[h // 5:h // 2, w // 3:w * 3 // 4] = rng.integers(0, 256, channels, dtype=np.uint8)
    return pixels[..., 0] if mode == "L" else pixels


def write_images(folder: Path, arrays) -> list:
    paths = []
    for (name, _, mode), pixels in zip(IMAGES, arrays):
        Image.fromarray(pixels, mode=mode).save(folder / name)
        paths.append(folder / name)
    return paths


def levels(processor, pixel_values: np.ndarray) -> np.ndarray:
    """The uint8 resized and cropped image behind pixel values (N, 3, H, W), checked to give them back
    bit for bit through the processor's own rescale and normalize: stored instead of the floats, it keeps
    the npz small and holds every resize and crop decision."""
    mean, std = (np.array(v, np.float64).reshape(1, 3, 1, 1) for v in (processor.image_mean, processor.image_std))
    u8 = np.clip(np.round((pixel_values * std + mean) * 255), 0, 255).astype(np.uint8)
    for image, values in zip(u8, pixel_values):
        scaled = processor.rescale(image, processor.rescale_factor, input_data_format="channels_first")
        again = processor.normalize(scaled, processor.image_mean, processor.image_std,
                                    input_data_format="channels_first")
        assert np.array_equal(again, values), "pixel values are not rescale + normalize of uint8 levels"
    return u8


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clip_r_checker(model, processor, image_path: Path, words: list):
    """The checker's clip_r_api for one image: ({text: probability}, hit)."""
    prompt = image_path.name.split(".")[0].lower()
    texts = list(set(words + [prompt]))
    inputs = processor(text=texts, images=Image.open(image_path), return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.softmax(dim=1)
    top = torch.topk(probs, 5).indices[0]
    hit = any(texts[i] == prompt for i in top.tolist())
    return dict(zip(texts, probs[0].tolist())), hit, prompt


def main():
    out = {}
    arrays = [synthetic(i, size, mode) for i, (_, size, mode) in enumerate(IMAGES)]
    out["image_names"] = np.array([name for name, _, _ in IMAGES])
    out["image_modes"] = np.array([mode for _, _, mode in IMAGES])
    for i, pixels in enumerate(arrays):
        out[f"image_{i}"] = pixels
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_images(tmp, arrays)

        # ---- DINOv2, as dino_api.py
        dino_dir = write_dino(tmp / "dino")
        out["dino_sha256"] = np.array(sha256(dino_dir / "model.safetensors"))
        processor = AutoImageProcessor.from_pretrained(dino_dir)
        model, info = AutoModel.from_pretrained(dino_dir, output_loading_info=True)
        assert type(processor).__name__ == "BitImageProcessor", type(processor)
        assert not any(info.values()), info
        model.eval()
        pooled, pixel_values = [], []
        for path in paths:
            pixels = processor(images=Image.open(path), return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                pooled.append(model(pixel_values=pixels).pooler_output[0].numpy())
            pixel_values.append(pixels[0].numpy())
        out["dino_levels"] = levels(processor, np.stack(pixel_values))
        out["dino_pooled"] = np.stack(pooled)
        pooled_t = [torch.from_numpy(p)[None] for p in pooled]
        per_gen = [np.mean([torch.nn.functional.cosine_similarity(pooled_t[r], pooled_t[g]).item()
                            for r in range(N_GEN, len(paths))]) for g in range(N_GEN)]
        out["dino_similarity"] = np.array(np.mean(per_gen))

        grid = torch.from_numpy(np.random.default_rng(7).standard_normal((1, 3, 37, 37)).astype(np.float32))
        out["bicubic_in"] = grid[0].numpy()
        for rows, cols in ((16, 16), (12, 20)):
            out[f"bicubic_{rows}x{cols}"] = torch.nn.functional.interpolate(
                grid, size=(rows, cols), mode="bicubic", align_corners=False)[0].numpy()

        # ---- CLIP, as clip_r_api.py
        clip_dir = write_clip(tmp / "clip")
        out["clip_sha256"] = np.array(sha256(clip_dir / "model.safetensors"))
        processor = CLIPProcessor.from_pretrained(clip_dir)
        model, info = CLIPModel.from_pretrained(clip_dir, output_loading_info=True)
        names = (type(processor.image_processor).__name__, type(processor.tokenizer).__name__)
        assert names == ("CLIPImageProcessor", "CLIPTokenizerFast"), names
        assert not any(info.values()), info
        assert model.config.text_config.eos_token_id == 2
        model.eval()
        pixels = processor(images=[Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]
        out["clip_levels"] = levels(processor.image_processor, pixels.numpy())
        with torch.no_grad():
            out["clip_image_embeds"] = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels),
                                                                     dim=-1).numpy()
            texts = [w.lower() for w in SMALL_WORDS]
            tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
            out["clip_text_ids"] = tokens["input_ids"].numpy().astype(np.int32)
            out["clip_text_embeds"] = torch.nn.functional.normalize(model.get_text_features(**tokens),
                                                                    dim=-1).numpy()
        out["clip_texts"] = np.array(texts)

        lists = {"small": texts, "checker": [w.strip().lower() for w in open(WORDS_FILE).readlines()]}
        for key, words in lists.items():
            hits, margins = [], []
            for i, path in enumerate(paths):
                probs, hit, prompt = clip_r_checker(model, processor, path, words)
                order = list(dict.fromkeys(words + [prompt]))  # the order common.score.clip_r returns
                out[f"clip_r_{key}_probs_{i}"] = np.array([probs[t] for t in order])
                ranked = sorted(probs.values(), reverse=True)
                at_edge = probs[prompt] in ranked[4:6]  # 5th or 6th: a rounding could flip the hit
                margins.append((ranked[4] - ranked[5]) / ranked[4] if at_edge else 1.0)
                hits.append(hit)
            out[f"clip_r_{key}_hits"] = np.array(hits)
            print(f"clip_r {key}: hits {hits}, smallest margin to the 5th/6th place {min(margins):.2e}")
    # the real architectures' key/shape listings (dinov2-base, clip-vit-large-patch14), weights left on "meta"
    with torch.device("meta"):
        for key, model in (("dino_base", AutoModel.from_config(Dinov2Config(**DINO_BASE))),
                           ("clip_large", CLIPModel(CLIPConfig(**CLIP_LARGE)))):
            state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
            out[f"{key}_keys"] = np.array(list(state))
            out[f"{key}_shapes"] = np.array([",".join(map(str, v.shape)) for v in state.values()])
    path = ROOT / "tests" / "golden" / "score_vit.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes); dino similarity {float(out['dino_similarity']):.6f}")


if __name__ == "__main__":
    main()
