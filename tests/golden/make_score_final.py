"""Golden file for the whole score (tests/test_score_final.py): the six metrics and the final score computed
with the checker's own libraries (transformers 4.57 DINOv2 and CLIP, OpenCV, torchmetrics 1.9 FID and
LPIPS with torch-fidelity and torchvision, torchmetrics' CLIP-IQA with piq), on the demo's random-weight
networks (`common.devkit.demo.write_score_files`) and the images of tests/score_final_data.py, combined as
the checker does (docs/score.md: per-style means, CLIP-R over all images, one pooled FID).

Run with the score's reference environment:
    /work/venv-score/bin/python tests/golden/make_score_final.py
Every network is loaded by its real library from the files the demo writes, except CLIP-IQA's archive:
ours holds no TorchScript code, so torch.jit cannot open it, and the same weights are written here as a
real traced archive (`make_score_iqa.clip_iqa_metric`).
"""
import functools
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "golden")]
from common.devkit.demo import write_score_files  # noqa: E402
from make_score_cnn import checker_hist  # noqa: E402
from make_score_iqa import checker_pixels, clip_iqa_metric  # noqa: E402
from make_score_vit import clip_r_checker  # noqa: E402
from score_final_data import write_styles  # noqa: E402

METRICS = ("dino", "hist", "lpips", "clip_iqa", "clip_r", "fid")


def uint8_batch(paths) -> torch.Tensor:
    """FID's input as the checker makes it: ToTensor, then (x*255).byte(), stacked."""
    return torch.stack([(transforms.ToTensor()(Image.open(p).convert("RGB")) * 255).byte() for p in paths])


def final_score(dino, hist, lpips, clip_r, fid, clip_iqa) -> float:
    """The formula of the checker's eval_score.py."""
    return (dino * 0.2 + hist * 0.4 + max(0.0, 1 - lpips) * 0.4) * (
        clip_r * 0.5 + (20 - min(fid, 20)) / 20 * 0.4 + clip_iqa * 0.1)


def main():
    work = Path(tempfile.mkdtemp())
    files = write_score_files(work / "score")
    styles = write_styles(work)
    out = {"styles": np.array(list(styles)),
           "image_sha256": np.array([hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest()
                                     for gens, refs in styles.values() for p in (*gens, *refs)])}

    # the torch files where torch-fidelity and torchvision look for them
    hub = work / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "weights-inception-2015-12-05-6726825d.pth").symlink_to(files["fid_inception"])
    (hub / "squeezenet1_1-b8a52dc0.pth").symlink_to(files["lpips_backbone"])
    os.environ["TORCH_HOME"] = str(work / "torch")

    from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor
    dino_processor = AutoImageProcessor.from_pretrained(files["dino"])
    dino, info = AutoModel.from_pretrained(files["dino"], output_loading_info=True)
    assert not any(info.values()), info
    clip_processor = CLIPProcessor.from_pretrained(files["clip"])
    clip, info = CLIPModel.from_pretrained(files["clip"], output_loading_info=True)
    assert not any(info.values()), info
    dino.eval(), clip.eval()
    words = [w.strip().lower() for w in open(files["clip_r_prompts"]).readlines()]

    from torchmetrics.functional.image import lpips as tm_lpips
    from torchmetrics.image.fid import FrechetInceptionDistance
    tm_lpips._NoTrainLpips = functools.partial(tm_lpips._NoTrainLpips, model_path=files["lpips_linear"])
    to_lpips = transforms.Compose([transforms.Resize((256, 256)), transforms.ToTensor()])
    pooled_fid = FrechetInceptionDistance(feature=64)  # strict load from $TORCH_HOME
    iqa = clip_iqa_metric(work / "iqa")  # after the other models: it sets HOME

    def pooler(path):
        with torch.no_grad():
            return dino(**dino_processor(images=Image.open(path), return_tensors="pt")).pooler_output

    hits, rows, margins = [], {}, []
    for style, (gens, refs) in styles.items():
        ref_dino = [pooler(r) for r in refs]
        dino_score = np.mean([np.mean([torch.nn.functional.cosine_similarity(pooler(g), r).item() for r in ref_dino])
                              for g in gens])
        style_hits = []
        for g in gens:
            probabilities, hit, _ = clip_r_checker(clip, clip_processor, g, words)
            style_hits.append(hit)
            ranked = sorted(probabilities.values(), reverse=True)
            margins.append((ranked[4] - ranked[5]) / ranked[4])  # how far the top 5 is from a tie
        gen_in = [to_lpips(Image.open(p).convert("RGB")) * 2 - 1 for p in gens]
        ref_in = [to_lpips(Image.open(p).convert("RGB")) * 2 - 1 for p in refs]
        with torch.no_grad():
            lpips = tm_lpips.learned_perceptual_image_patch_similarity(
                torch.stack([g for g in gen_in for _ in ref_in])[:, :3],
                torch.stack([r for _ in gen_in for r in ref_in])[:, :3], net_type="squeeze").item()
            clip_iqa = iqa(checker_pixels(gens)).reshape(-1).mean().item()  # one call per style
        style_fid = FrechetInceptionDistance(feature=64)
        for metric in (style_fid, pooled_fid):
            metric.update(uint8_batch(refs), real=True)
            metric.update(uint8_batch(gens), real=False)
        rows[style] = {"dino": dino_score, "hist": checker_hist(gens, refs), "lpips": lpips, "clip_iqa": clip_iqa,
                       "clip_r": np.mean(style_hits), "fid": style_fid.compute().item()}
        hits += style_hits
    overall = {k: np.mean([row[k] for row in rows.values()]) for k in ("dino", "hist", "lpips", "clip_iqa")}
    overall.update(clip_r=np.mean(hits), fid=pooled_fid.compute().item())
    for name, row in (*((f"style_{s}", r) for s, r in rows.items()), ("overall", overall)):
        row["final"] = final_score(row["dino"], row["hist"], row["lpips"], row["clip_r"], row["fid"], row["clip_iqa"])
        out.update({f"{name}_{k}": np.float64(v) for k, v in row.items()})
    out["hits"] = np.array(hits)
    out["clip_r_margin"] = np.float64(min(margins))
    np.savez_compressed(ROOT / "tests" / "golden" / "score_final.npz", **out)
    for key in sorted(out):
        print(key, out[key] if out[key].size < 8 else out[key].shape)


if __name__ == "__main__":
    main()
