"""Golden file for CLIP-IQA (tests/test_score_iqa.py): torchmetrics 1.9's CLIPImageQualityAssessment with
piq 0.8's CLIP, offline, on the development kit's small random-weight ResNet CLIP.

Run with the score's reference environment (README, "Parity references"):
    /work/venv-score/bin/python tests/golden/make_score_iqa.py
The weights come from `common.devkit.score_weights_iqa` (NumPy); here they are saved as a real torch.jit
archive, which our reader (`common.sd.torchscript`, NumPy only) is checked to read back as torch's
`state_dict()`. The images are tests/score_iqa_data.py's, read as the checker reads them.
"""
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from common.devkit.score_weights_iqa import SMALL, rn50_state, write_clip_tokenizer  # noqa: E402
from common.sd.torchscript import read_torchscript  # noqa: E402
from score_iqa_data import write_images  # noqa: E402

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def checker_pixels(paths) -> torch.Tensor:
    """The checker's read of a batch: ToTensor x 255, stacked."""
    return torch.stack([transforms.ToTensor()(Image.open(p).convert("RGB")) * 255 for p in paths])


def clip_iqa_metric(work: Path):
    """torchmetrics' CLIPImageQualityAssessment(prompts=("quality",)) as the checker builds it, loading the
    devkit's weights from a real torch.jit archive at `work`/home/.cache/clip/RN50.pt (HOME is set to
    `work`/home) and the devkit's tokenizer; our reader is checked on that archive first."""
    from piq.feature_extractors.clip import CLIP
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
    ours, torchs = read_torchscript(archive), torch.jit.load(str(archive)).state_dict()
    assert sorted(ours) == sorted(torchs), set(ours) ^ set(torchs)  # the state dict's keys, no more
    for key, value in torchs.items():
        assert np.array_equal(ours[key], value.numpy()), key

    tokenizer = write_clip_tokenizer(work / "tokenizer")
    import transformers
    from transformers import CLIPImageProcessor, CLIPTokenizerFast
    transformers.CLIPProcessor.from_pretrained = staticmethod(lambda *a, **k: transformers.CLIPProcessor(
        image_processor=CLIPImageProcessor(), tokenizer=CLIPTokenizerFast.from_pretrained(str(tokenizer))))
    os.environ["HOME"] = str(work / "home")
    from torchmetrics.multimodal import CLIPImageQualityAssessment
    return CLIPImageQualityAssessment(prompts=("quality",))  # model "clip_iqa", data_range 1.0


def main():
    work = Path(tempfile.mkdtemp())
    metric = clip_iqa_metric(work)
    out = {"anchors": metric.anchors.numpy()}
    for group, paths in write_images(work / "images").items():  # one call per size: each goes in whole
        pixels = checker_pixels(paths)
        out[f"{group}_scores"] = metric(pixels).reshape(-1).numpy()
        with torch.no_grad():
            f = metric.model.encode_image((pixels - MEAN) / STD, pos_embedding=False).float()
            out[f"{group}_image_features"] = (f / f.norm(dim=-1, keepdim=True)).numpy()
    path = ROOT / "tests" / "golden" / "score_iqa.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes): scores",
          {k: np.round(v, 4).tolist() for k, v in out.items() if k.endswith("_scores")})


if __name__ == "__main__":
    main()
