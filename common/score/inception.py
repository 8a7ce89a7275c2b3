"""torch-fidelity's FID Inception v3 up to its 64-channel features, in Jittor (docs/score.md).

FID with `feature=64` runs only the stem: three 3x3 convolutions (without bias, each followed by an
inference BatchNorm with eps 1e-3 and ReLU) and a 3/2 max pool, then a global average. Names are the
weight file's keys (`Conv2d_1a_3x3.conv.weight`, `Conv2d_1a_3x3.bn.running_mean`, ...).
"""
from common.jittor_env import load_jittor

jt = load_jittor()
nn = jt.nn

INPUT_SIZE = 299


class BatchNorm2d(nn.Module):
    """Inference BatchNorm: (x − running_mean) / √(running_var + eps) · weight + bias."""

    def __init__(self, channels: int, eps: float):
        self.eps = eps
        self.weight = jt.ones((channels,), "float32")
        self.bias = jt.zeros((channels,), "float32")
        self.running_mean = jt.zeros((channels,), "float32")
        self.running_var = jt.ones((channels,), "float32")

    def execute(self, x):
        scale = self.weight / jt.sqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape((1, -1, 1, 1)) + shift.reshape((1, -1, 1, 1))


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, padding: int = 0):
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=padding, bias=False)
        self.bn = BatchNorm2d(out_channels, eps=1e-3)

    def execute(self, x):
        return nn.relu(self.bn(self.conv(x)))


class FidInceptionStem(nn.Module):
    """(N, 3, 299, 299) pixel values 0..255 (float) → (N, 64) features."""

    def __init__(self):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(3, stride=2)

    def execute(self, x):
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        return self.MaxPool_1(x).mean(dims=(2, 3))
