"""torchvision's SqueezeNet 1.1 feature layers, in Jittor, cut where LPIPS reads them (docs/score.md).

`features` keeps torchvision's indices (0: 3x3/2 conv, 1: ReLU, 2/5/8: 3/2 max pools with ceil mode,
the others Fire modules), so names are the weight file's keys (`features.3.squeeze.weight`, ...); the
classifier is not needed and not built.
"""
from common.jittor_env import load_jittor

jt = load_jittor()
nn = jt.nn

# LPIPS reads the output after features[0:2], [2:5], [5:8], [8:10], [10:11], [11:12], [12:13]
SLICE_ENDS = (2, 5, 8, 10, 11, 12, 13)
CHANNELS = (64, 128, 256, 384, 384, 512, 512)


class Fire(nn.Module):
    """1x1 squeeze, then 1x1 and 3x3 expands side by side (each conv followed by ReLU)."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int):
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)

    def execute(self, x):
        x = nn.relu(self.squeeze(x))
        return jt.concat([nn.relu(self.expand1x1(x)), nn.relu(self.expand3x3(x))], dim=1)


def _pool():
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


class SqueezeNet(nn.Module):
    """`slices(x)`: the 7 activations LPIPS compares."""

    def __init__(self):
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(), _pool(),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), _pool(),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), _pool(),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))

    def slices(self, x) -> list:
        outputs, start = [], 0
        for end in SLICE_ENDS:
            for i in range(start, end):
                x = self.features[i](x)
            outputs.append(x)
            start = end
        return outputs
