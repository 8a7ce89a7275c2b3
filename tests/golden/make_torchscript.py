"""Golden TorchScript archives for tests/test_torchscript.py: one traced, one scripted, with their state dicts.

Run with /work/venv-score/bin/python (torch): writes torchscript_traced.pt, torchscript_scripted.pt and
torchscript.npz (each archive's `state_dict()` as torch.jit.load reads it; `<archive>/keys` lists names).
The module has what CLIP's RN50.pt has: fp16 and fp32 parameters, a 0-d integer buffer, a Sequential, a
MultiheadAttention, a bias-less conv, and a plain tensor attribute (attn_mask) that is not in the state dict.
"""
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).parent


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn, self.ln, self.attn_mask = nn.MultiheadAttention(d, 2), nn.LayerNorm(d), torch.zeros(3, 3)

    def forward(self, x):
        return self.attn(self.ln(x), x, x, need_weights=False, attn_mask=self.attn_mask)[0]


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
        self.blocks = nn.Sequential(Block(4), Block(4))
        self.proj = nn.Parameter(torch.randn(4, 2).half())
        self.register_buffer("input_resolution", torch.tensor(224))

    def forward(self, img, x):
        return self.bn(self.conv(img)).mean() + (self.blocks(x)[0] @ self.proj.float()).sum()


def main():
    torch.manual_seed(0)
    model = Model().eval()
    traced = torch.jit.trace(model, (torch.randn(1, 3, 8, 8), torch.randn(3, 1, 4)))
    archives = {"traced": traced, "scripted": torch.jit.script(model)}
    arrays = {}
    for name, module in archives.items():
        path = OUT / f"torchscript_{name}.pt"
        torch.jit.save(module, str(path))
        state = torch.jit.load(str(path)).state_dict()
        arrays[f"{name}/keys"] = np.array(list(state))
        arrays.update({f"{name}/{k}": v.numpy() for k, v in state.items()})
    np.savez_compressed(OUT / "torchscript.npz", **arrays)


if __name__ == "__main__":
    main()
