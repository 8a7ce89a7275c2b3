"""Random-weight files of the score's CNNs in their real formats, from a deterministic NumPy rule.

The real architectures (they are fixed): torch-fidelity's FID Inception v3 with every key of its
1008-class network (`weights-inception-2015-12-05-6726825d.pth`), torchvision's SqueezeNet 1.1
(`squeezenet1_1-b8a52dc0.pth`: `features.*`, `classifier.1.*`), and the LPIPS v0.1 heads (`squeeze.pth`,
in torch < 1.6's legacy layout, as the lpips and torchmetrics packages ship it). The reference scripts
load these files into the torch libraries (strictly) and the Jittor side reads them with the safe reader,
so both sides see the same numbers. Nothing here imports jittor or torch.
"""
import zlib

import numpy as np

from common.sd.weights import save_torch_legacy, save_torch_zip

SEED = 2025


def score_param(name: str, shape, seed: int = SEED) -> np.ndarray:
    """The value of parameter `name`, seeded by the name. Weights: N·√(2/fan_in) (activations keep their
    scale through ReLU layers); biases 0.1·N; BatchNorm weight 1 + 0.1·N, bias and running mean 0.1·N,
    running variance exp(0.2·N); LPIPS heads 0.1·|N| (non-negative, as trained heads are)."""
    rng = np.random.default_rng((seed ^ zlib.crc32(name.encode())) & 0xFFFFFFFF)
    if name.endswith("num_batches_tracked"):
        return np.array(0, np.int64)
    x = rng.standard_normal(tuple(shape))
    if name.startswith("lin"):
        value = 0.1 * np.abs(x)
    elif ".bn." in name:
        value = {"weight": 1 + 0.1 * x, "bias": 0.1 * x, "running_mean": 0.1 * x,
                 "running_var": np.exp(0.2 * x)}[name.rsplit(".", 1)[1]]
    elif name.endswith("bias"):
        value = 0.1 * x
    else:
        value = x * np.sqrt(2.0 / np.prod(shape[1:]))
    return value.astype(np.float32)


def _basic_conv(name: str, cin: int, cout: int, kernel) -> dict:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return {f"{name}.conv.weight": (cout, cin, kh, kw), f"{name}.bn.weight": (cout,), f"{name}.bn.bias": (cout,),
            f"{name}.bn.running_mean": (cout,), f"{name}.bn.running_var": (cout,),
            f"{name}.bn.num_batches_tracked": ()}


def _inception_a(cin, pool):
    return [("branch1x1", cin, 64, 1), ("branch5x5_1", cin, 48, 1), ("branch5x5_2", 48, 64, 5),
            ("branch3x3dbl_1", cin, 64, 1), ("branch3x3dbl_2", 64, 96, 3), ("branch3x3dbl_3", 96, 96, 3),
            ("branch_pool", cin, pool, 1)]


def _inception_b(cin):
    return [("branch3x3", cin, 384, 3), ("branch3x3dbl_1", cin, 64, 1), ("branch3x3dbl_2", 64, 96, 3),
            ("branch3x3dbl_3", 96, 96, 3)]


def _inception_c(cin, c7):
    return [("branch1x1", cin, 192, 1), ("branch7x7_1", cin, c7, 1), ("branch7x7_2", c7, c7, (1, 7)),
            ("branch7x7_3", c7, 192, (7, 1)), ("branch7x7dbl_1", cin, c7, 1), ("branch7x7dbl_2", c7, c7, (7, 1)),
            ("branch7x7dbl_3", c7, c7, (1, 7)), ("branch7x7dbl_4", c7, c7, (7, 1)),
            ("branch7x7dbl_5", c7, 192, (1, 7)), ("branch_pool", cin, 192, 1)]


def _inception_d(cin):
    return [("branch3x3_1", cin, 192, 1), ("branch3x3_2", 192, 320, 3), ("branch7x7x3_1", cin, 192, 1),
            ("branch7x7x3_2", 192, 192, (1, 7)), ("branch7x7x3_3", 192, 192, (7, 1)),
            ("branch7x7x3_4", 192, 192, 3)]


def _inception_e(cin):
    return [("branch1x1", cin, 320, 1), ("branch3x3_1", cin, 384, 1), ("branch3x3_2a", 384, 384, (1, 3)),
            ("branch3x3_2b", 384, 384, (3, 1)), ("branch3x3dbl_1", cin, 448, 1), ("branch3x3dbl_2", 448, 384, 3),
            ("branch3x3dbl_3a", 384, 384, (1, 3)), ("branch3x3dbl_3b", 384, 384, (3, 1)),
            ("branch_pool", cin, 192, 1)]


def inception_shapes() -> dict:
    """{key: shape} of torch-fidelity's FeatureExtractorInceptionV3, in its state_dict order."""
    shapes = {}
    for name, cin, cout, kernel in [("Conv2d_1a_3x3", 3, 32, 3), ("Conv2d_2a_3x3", 32, 32, 3),
                                    ("Conv2d_2b_3x3", 32, 64, 3), ("Conv2d_3b_1x1", 64, 80, 1),
                                    ("Conv2d_4a_3x3", 80, 192, 3)]:
        shapes.update(_basic_conv(name, cin, cout, kernel))
    blocks = [("Mixed_5b", _inception_a(192, 32)), ("Mixed_5c", _inception_a(256, 64)),
              ("Mixed_5d", _inception_a(288, 64)), ("Mixed_6a", _inception_b(288)),
              ("Mixed_6b", _inception_c(768, 128)), ("Mixed_6c", _inception_c(768, 160)),
              ("Mixed_6d", _inception_c(768, 160)), ("Mixed_6e", _inception_c(768, 192)),
              ("Mixed_7a", _inception_d(768)), ("Mixed_7b", _inception_e(1280)), ("Mixed_7c", _inception_e(2048))]
    for block, convs in blocks:
        for name, cin, cout, kernel in convs:
            shapes.update(_basic_conv(f"{block}.{name}", cin, cout, kernel))
    shapes.update({"fc.weight": (1008, 2048), "fc.bias": (1008,)})
    return shapes


def squeezenet_shapes() -> dict:
    """{key: shape} of torchvision's squeezenet1_1, in its state_dict order."""
    shapes = {"features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,)}
    fires = {3: (64, 16, 64), 4: (128, 16, 64), 6: (128, 32, 128), 7: (256, 32, 128), 9: (256, 48, 192),
             10: (384, 48, 192), 11: (384, 64, 256), 12: (512, 64, 256)}
    for index, (cin, squeeze, expand) in fires.items():
        for name, shape in (("squeeze", (squeeze, cin, 1, 1)), ("expand1x1", (expand, squeeze, 1, 1)),
                            ("expand3x3", (expand, squeeze, 3, 3))):
            shapes.update({f"features.{index}.{name}.weight": shape, f"features.{index}.{name}.bias": shape[:1]})
    shapes.update({"classifier.1.weight": (1000, 512, 1, 1), "classifier.1.bias": (1000,)})
    return shapes


def lpips_linear_shapes() -> dict:
    return {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate((64, 128, 256, 384, 384, 512, 512))}


def _state(shapes: dict) -> dict:
    return {name: score_param(name, shape) for name, shape in shapes.items()}


def write_inception(path) -> None:
    """torch-fidelity's weights file (a torch.save zip, ~95 MB)."""
    save_torch_zip(_state(inception_shapes()), path)


def write_squeezenet(path) -> None:
    """torchvision's SqueezeNet 1.1 weights file (a torch.save zip)."""
    save_torch_zip(_state(squeezenet_shapes()), path)


def write_lpips_linear(path) -> None:
    """The LPIPS v0.1 `squeeze.pth` heads, in the legacy layout the packages ship."""
    save_torch_legacy(_state(lpips_linear_shapes()), path)
