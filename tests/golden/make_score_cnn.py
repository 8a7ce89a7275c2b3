"""Regenerate tests/golden/score_cnn.npz with the checker's libraries (score venv):
/work/venv-score/bin/python tests/golden/make_score_cnn.py

On random-weight files written by common.devkit.score_weights_cnn, loaded strictly by the libraries from
where they look ($TORCH_HOME/hub/checkpoints/ for Inception and SqueezeNet; the LPIPS heads through
torchmetrics' own loader): torchmetrics' FrechetInceptionDistance(feature=64) (its 64 features per image
and the pooled FID), torchmetrics' LPIPS net_type="squeeze" (each pair, each layer, each style's mean),
and the histogram score with OpenCV as the checker computes it (also an exhaustive check that the NumPy
HSV conversion equals OpenCV's). The dataset is tests/score_cnn_data.py's.
"""
import functools
import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from common.devkit.score_weights_cnn import write_inception, write_lpips_linear, write_squeezenet  # noqa: E402
from common.score.hist import hsv_opencv  # noqa: E402  (NumPy only; checked against OpenCV below)
from score_cnn_data import write_dataset  # noqa: E402


def checker_hist(gen_paths, ref_paths) -> float:
    """The checker's histogram score in OpenCV: uint8 index arithmetic (it wraps), calcHist, CORREL."""
    def hists(path):
        img = cv2.imread(str(path))
        b, g, r = img[..., 0], img[..., 1], img[..., 2]
        index = b // 16 * 16 * 16 + g // 16 * 16 + r // 16
        assert index.dtype == np.uint8
        rgb = cv2.calcHist([index], [0], None, [4096], [0, 4096])
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        h, s, v = hsv[..., 0] * 2, hsv[..., 1], hsv[..., 2]
        assert h.dtype == np.uint8
        hb = np.zeros_like(h)
        for low, high, k in ((20, 40, 1), (40, 75, 2), (75, 155, 3), (155, 190, 4), (190, 270, 5), (270, 295, 6),
                             (295, 315, 7)):
            hb[(h > low) & (h <= high)] = k
        sb = np.where(s <= 51, 0, np.where(s <= 178, 1, 2)).astype(np.uint8)
        vb = np.where(v <= 51, 0, np.where(v <= 178, 1, 2)).astype(np.uint8)
        index = (9 * hb + 3 * sb + vb).astype(np.uint8)
        return rgb, cv2.calcHist([index], [0], None, [72], [0, 71])
    refs = [hists(p) for p in ref_paths]
    ref_rgb = np.mean([r for r, _ in refs], axis=0).astype(np.float32)
    ref_hsv = np.mean([h for _, h in refs], axis=0).astype(np.float32)
    scores_rgb, scores_hsv = [], []
    for path in gen_paths:
        rgb, hsv = hists(path)
        scores_rgb.append(cv2.compareHist(ref_rgb, rgb, cv2.HISTCMP_CORREL))
        scores_hsv.append(cv2.compareHist(ref_hsv, hsv, cv2.HISTCMP_CORREL))
    return (np.mean(scores_rgb) + np.mean(scores_hsv)) / 2


def check_hsv_against_opencv() -> tuple:
    """Every 24-bit colour through both conversions; returns the mismatch count and a stored sample."""
    colours = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], -1).astype(np.uint8)
    rgb = rgb.reshape(4096, 4096, 3)
    ref = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2HSV)
    mismatches = int((hsv_opencv(rgb) != ref).any(-1).sum())
    pick = np.random.default_rng(5).integers(0, 1 << 24, 20000)
    return mismatches, rgb.reshape(-1, 3)[pick], ref.reshape(-1, 3)[pick]


def main():
    work = Path(tempfile.mkdtemp())
    os.environ["TORCH_HOME"] = str(work / "torch")
    hub = work / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    write_inception(hub / "weights-inception-2015-12-05-6726825d.pth")
    write_squeezenet(hub / "squeezenet1_1-b8a52dc0.pth")
    heads = work / "squeeze.pth"
    write_lpips_linear(heads)
    for path in (*hub.iterdir(), heads):  # the format is real: torch reads it with its safe loader
        torch.load(path, weights_only=True)

    from torchmetrics.functional.image import lpips as tm_lpips
    from torchmetrics.image.fid import FrechetInceptionDistance
    styles = write_dataset(work / "data")
    out = {}

    # FID: all references pooled against all generated images (uint8 as ToTensor then (x*255).byte())
    def uint8_batch(paths):
        return torch.stack([(transforms.ToTensor()(Image.open(p).convert("RGB")) * 255).byte() for p in paths])
    fid = FrechetInceptionDistance(feature=64)  # strict load from $TORCH_HOME
    refs = [p for gens, refs in styles.values() for p in refs]
    gens = [p for gens, refs in styles.values() for p in gens]
    with torch.no_grad():
        out["fid_ref_features"] = fid.inception(uint8_batch(refs)).numpy()
        out["fid_gen_features"] = fid.inception(uint8_batch(gens)).numpy()
    fid.update(uint8_batch(refs), real=True)
    fid.update(uint8_batch(gens), real=False)
    out["fid"] = np.float32(fid.compute().item())

    # the antialiased resize alone, on small shapes (down, up, and each axis its own way)
    rng = np.random.default_rng(3)
    for name, shape, size in (("down", (1, 3, 50, 70), (23, 31)), ("up", (1, 3, 20, 17), (41, 29)),
                              ("mixed", (1, 3, 40, 9), (13, 30))):
        x = rng.integers(0, 256, shape).astype(np.uint8)
        out[f"resize_{name}_in"] = x
        out[f"resize_{name}_out"] = torch.nn.functional.interpolate(
            torch.from_numpy(x).float(), size=size, mode="bilinear", align_corners=False, antialias=True).numpy()

    # LPIPS per style: torchmetrics' functional LPIPS, its heads read from our file (strict check first)
    net_class = functools.partial(tm_lpips._NoTrainLpips, model_path=str(heads))
    net = net_class(net="squeeze")
    loaded = torch.load(heads, weights_only=True)
    assert set(loaded) == {k for k in net.state_dict() if re.match(r"lin\d\.", k)}, "heads file keys"
    tm_lpips._NoTrainLpips = net_class
    to_input = transforms.Compose([transforms.Resize((256, 256)), transforms.ToTensor()])
    lpips_styles, hist_styles = [], []
    for style, (gens, refs) in styles.items():
        gen_in = [to_input(Image.open(p).convert("RGB")) * 2 - 1 for p in gens]
        ref_in = [to_input(Image.open(p).convert("RGB")) * 2 - 1 for p in refs]
        a = torch.stack([g for g in gen_in for _ in ref_in])[:, :3]
        b = torch.stack([r for _ in gen_in for r in ref_in])[:, :3]
        with torch.no_grad():
            value = tm_lpips.learned_perceptual_image_patch_similarity(a, b, net_type="squeeze")
            _, layers = net(a, b, retperlayer=True)
        out[f"lpips_layers_{style}"] = torch.stack([x.reshape(-1) for x in layers], 1).numpy().reshape(
            len(gens), len(refs), len(layers))
        lpips_styles.append(value.item())
        hist_styles.append(checker_hist(gens, refs))
    out["lpips_styles"], out["lpips"] = np.array(lpips_styles), np.mean(lpips_styles)
    out["hist_styles"], out["hist"] = np.array(hist_styles), np.mean(hist_styles)
    first_gen, first_ref = styles["00"][0][0], styles["00"][1][0]
    for name, path in (("gen", first_gen), ("ref", first_ref)):  # the PIL resize LPIPS sees, for the test
        out[f"lpips_resized_{name}"] = np.asarray(transforms.Resize((256, 256))(Image.open(path).convert("RGB")))

    mismatches, colours, hsv = check_hsv_against_opencv()
    assert mismatches == 0, f"NumPy HSV differs from OpenCV on {mismatches} colours"
    out["hsv_colours"], out["hsv_opencv"] = colours, hsv
    out["dataset_sha256"] = np.array([hashlib.sha256(p.read_bytes()).hexdigest()
                                      for gens, refs in styles.values() for p in (*gens, *refs)])
    path = ROOT / "tests" / "golden" / "score_cnn.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes): fid {out['fid']:.6f}, lpips {out['lpips']:.6f} "
          f"{np.round(lpips_styles, 5)}, hist {out['hist']:.6f} {np.round(hist_styles, 5)}")


if __name__ == "__main__":
    main()
