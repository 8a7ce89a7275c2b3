"""Training attention (common.sd.attention_grad): the fused CPU kernels and the Jittor-ops path (what CUDA
runs) give the output and the q/k/v gradients of Jittor's autograd through plain attention ops."""
import numpy as np
import pytest

from common.jittor_env import load_jittor
from common.sd.attention_grad import attention_autograd, attention_with_grad

jt = load_jittor()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("batch,n,m,c,heads,kv_batch", [(1, 200, 200, 16, 2, 1),  # two query blocks
                                                        (2, 130, 77, 32, 4, 1),  # cross-attention, k/v broadcast
                                                        (2, 64, 64, 8, 1, 2)])
def test_output_and_gradients_equal_autograd(fused, batch, n, m, c, heads, kv_batch):
    rng = np.random.default_rng(n + m)
    q = jt.array(rng.standard_normal((batch, n, c)).astype(np.float32))
    k, v = (jt.array(rng.standard_normal((kv_batch, m, c)).astype(np.float32)) for _ in range(2))
    weight = jt.array(rng.standard_normal((batch, n, c)).astype(np.float32))  # a loss that weighs every output

    def run(attend):
        out = attend(q, k, v, heads, 0.3)
        return [out.numpy()] + [g.numpy() for g in jt.grad((out * weight).sum(), [q, k, v])]

    ours = run(lambda *args: attention_with_grad(*args, fused=fused))
    reference = run(attention_autograd)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, reference):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), name
