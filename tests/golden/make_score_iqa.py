"""Golden file for CLIP-IQA (tests/test_score_iqa.py): torchmetrics 1.9's CLIPImageQualityAssessment with
piq 0.8's CLIP, offline, on the development kit's small random-weight ResNet CLIP.

Run with the score's reference environment (README, "Parity references"):
    /work/venv-score/bin/python tests/golden/make_score_iqa.py
The weights come from `common.devkit.score_weights_iqa` (NumPy); here they are saved as a real torch.jit
archive, which our reader (`common.sd.torchscript`, NumPy only) is checked to read back exactly. A tiny
real archive is kept as `tests/golden/script_tiny.pt` for the reader's own test.
"""
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from common.devkit.score_weights_iqa import SMALL, rn50_state, write_clip_tokenizer  # noqa: E402
from common.sd.torchscript import read_torchscript  # noqa: E402

SIZES = ((64, 64), (48, 80))  # (height, width): each image goes in whole, at its own size


def images() -> dict:
    rng = np.random.default_rng(7)
    out = {}
    for h, w in SIZES:
        yy, xx = np.mgrid[:h, :w]
        for i in range(2):
            smooth = (np.stack([xx * (i + 1), yy * (2 - i), xx + yy], -1) * 255 / (h + w)).astype(np.float32)
            out[f"{h}x{w}_{i}"] = np.clip(smooth + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    return out


def main():
    from piq.feature_extractors.clip import CLIP
    work = Path(tempfile.mkdtemp())
    state = rn50_state(small=True)
    model = CLIP(embed_dim=SMALL["embed_dim"], image_resolution=SMALL["grid"] * 32, vision_layers=SMALL["layers"],
                 vision_width=SMALL["vision_width"], vision_patch_size=None, context_length=SMALL["context"],
                 vocab_size=state["token_embedding.weight"].shape[0], transformer_width=SMALL["width"],
                 transformer_heads=SMALL["width"] // 64, transformer_layers=SMALL["text_layers"]).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()},
                                                strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") or k == "logit_scale" for k in missing), \
        (missing, unexpected)  # logit_scale keeps its init: CLIP-IQA does not use it
    with torch.no_grad():  # float32 storages holding the float16 values (piq rounds to float16 again: a no-op)
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 64, 64), torch.zeros(2, 77, dtype=torch.long)),
                                 check_trace=False)
    archive = work / "home" / ".cache" / "clip" / "RN50.pt"
    archive.parent.mkdir(parents=True)
    traced.save(str(archive))
    ours = read_torchscript(archive)  # our reader on a real torch.jit archive
    for key, value in state.items():
        assert np.array_equal(ours[key], value.astype(np.float32)), key

    tiny = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval())
    tiny.save(str(ROOT / "tests" / "golden" / "script_tiny.pt"))
    tiny_state = {f"tiny.{k}": v.numpy() for k, v in tiny.state_dict().items()}

    tokenizer = write_clip_tokenizer(work / "tokenizer")
    import transformers
    from transformers import CLIPImageProcessor, CLIPTokenizerFast
    transformers.CLIPProcessor.from_pretrained = staticmethod(lambda *a, **k: transformers.CLIPProcessor(
        image_processor=CLIPImageProcessor(), tokenizer=CLIPTokenizerFast.from_pretrained(str(tokenizer))))
    os.environ["HOME"] = str(work / "home")
    from torchmetrics.multimodal import CLIPImageQualityAssessment
    metric = CLIPImageQualityAssessment(prompts=("quality",))  # model "clip_iqa", data_range 1.0
    pictures = images()
    out = {f"picture_{k}": v for k, v in pictures.items()}
    scores, features = [], []
    for h, w in SIZES:
        batch = [v for k, v in pictures.items() if k.startswith(f"{h}x{w}_")]
        pixels = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in batch]).float()  # ToTensor x 255
        scores.append(metric(pixels).reshape(-1).numpy())
        with torch.no_grad():
            mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
            std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
            f = metric.model.encode_image((pixels - mean) / std, pos_embedding=False).float()
            features.append((f / f.norm(dim=-1, keepdim=True)).numpy())
    out["scores"], out["image_features"] = np.concatenate(scores), np.concatenate(features)
    out["anchors"] = metric.anchors.numpy()
    out.update({f"tiny_{k}": v for k, v in tiny_state.items()})
    path = ROOT / "tests" / "golden" / "score_iqa.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes): scores {np.round(out['scores'], 6)}")


if __name__ == "__main__":
    main()
