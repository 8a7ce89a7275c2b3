"""The reference side of benchmarks/score.py: the checker's libraries on PyTorch (CPU), timing each metric
the way the checker calls it, on the files benchmarks/score.py wrote. Run by it with --torch-python;
prints one JSON line {metric: seconds}."""
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "golden")]
from make_score_cnn import checker_hist  # noqa: E402
from make_score_vit import clip_r_checker  # noqa: E402


def traced_rn50(path: Path, small: bool) -> Path:
    """The devkit's RN50 weights as a real torch.jit archive: piq opens only those (the devkit writes the
    same weights in our reader's code-free layout), then rebuilds its CLIP from the archive's state dict."""
    import numpy as np
    from piq.feature_extractors.clip import CLIP
    from common.devkit.score_weights_iqa import RN50, SMALL, rn50_state
    if path.exists():
        return path
    sizes, state = SMALL if small else RN50, rn50_state(small)
    model = CLIP(embed_dim=sizes["embed_dim"], image_resolution=sizes["grid"] * 32, vision_layers=sizes["layers"],
                 vision_width=sizes["vision_width"], vision_patch_size=None, context_length=sizes["context"],
                 vocab_size=state["token_embedding.weight"].shape[0], transformer_width=sizes["width"],
                 transformer_heads=sizes["width"] // 64, transformer_layers=sizes["text_layers"]).eval()
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()}, strict=False)
    with torch.no_grad():
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 64, 64), torch.zeros(2, 77, dtype=torch.long)),
                                 check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


def timed(fn):
    fn()  # warm-up
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    work, threads = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    files = json.loads((work / "files.json").read_text())
    gens, refs = json.loads((work / "images.json").read_text())
    gens, refs = [Path(p) for p in gens], [Path(p) for p in refs]
    words = Path(files["clip_r_prompts"]).read_text().splitlines()
    out = {}
    from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor
    dino_proc, dino = AutoImageProcessor.from_pretrained(files["dino"]), AutoModel.from_pretrained(files["dino"])

    def dino_embed():  # the checker: one batch-1 forward per image of each pair; here once per image
        with torch.no_grad():
            return [dino(**dino_proc(images=Image.open(p), return_tensors="pt")).pooler_output for p in gens]
    out["dino"] = timed(dino_embed)
    clip_proc, clip = CLIPProcessor.from_pretrained(files["clip"]), CLIPModel.from_pretrained(files["clip"])
    out["clip_r"] = timed(lambda: [clip_r_checker(clip, clip_proc, p, words) for p in gens])

    os.environ["TORCH_HOME"] = files["torch_home"]
    from torchmetrics.functional.image import lpips as tm_lpips
    from torchmetrics.image.fid import FrechetInceptionDistance
    fid = FrechetInceptionDistance(feature=64)

    def uint8_batch(paths):
        return torch.stack([(transforms.ToTensor()(Image.open(p).convert("RGB")) * 255).byte() for p in paths])
    out["fid"] = timed(lambda: fid.update(uint8_batch(gens), real=False))
    tm_lpips._NoTrainLpips = functools.partial(tm_lpips._NoTrainLpips, model_path=files["lpips_linear"])
    to_input = transforms.Compose([transforms.Resize((256, 256)), transforms.ToTensor()])

    def lpips():
        gen_in = [to_input(Image.open(p).convert("RGB")) * 2 - 1 for p in gens]
        ref_in = [to_input(Image.open(p).convert("RGB")) * 2 - 1 for p in refs]
        a = torch.stack([g for g in gen_in for _ in ref_in])[:, :3]
        b = torch.stack([r for _ in gen_in for r in ref_in])[:, :3]
        with torch.no_grad():
            return tm_lpips.learned_perceptual_image_patch_similarity(a, b, net_type="squeeze")
    out["lpips"] = timed(lpips)
    out["hist"] = timed(lambda: checker_hist(gens, refs))
    archive = traced_rn50(work / "piq_home" / ".cache" / "clip" / "RN50.pt", files["small"])
    import transformers
    from transformers import CLIPImageProcessor, CLIPTokenizerFast
    tokenizer = CLIPTokenizerFast.from_pretrained(files["clip_iqa_tokenizer"])
    transformers.CLIPProcessor.from_pretrained = staticmethod(lambda *a, **k: transformers.CLIPProcessor(
        image_processor=CLIPImageProcessor(), tokenizer=tokenizer))  # offline: the devkit's tokenizer files
    os.environ["HOME"] = str(archive.parents[2])  # piq reads ~/.cache/clip/RN50.pt
    from torchmetrics.multimodal import CLIPImageQualityAssessment
    iqa = CLIPImageQualityAssessment(prompts=("quality",))
    out["clip_iqa"] = timed(lambda: iqa(uint8_batch(gens).float()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
