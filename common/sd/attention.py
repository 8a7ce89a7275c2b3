"""Multi-head attention with swappable processors, and the fast kernel they share.

StyleID records and injects q/k/v inside chosen layers, so each `Attention` calls `self.processor`; a
processor is any `processor(attn, hidden_states, encoder_hidden_states=None)` and reuses `attention()`.

On CPU, plain Jittor attention is slow (its batched matmul bypasses oneDNN and softmax takes several
passes), so `attention()` runs one fused kernel: per (batch, head, block of queries) a oneDNN sgemm for
the logits, an in-place softmax, and a second sgemm into the output. Heads are read in place with a
leading dimension (no transposes), the logits buffer is one block per thread (bounded memory), and K/V
with batch 1 are broadcast by a zero stride.

Elsewhere (CUDA) the generic path runs: two batched matmuls (cuBLAS) around one softmax kernel (Jittor's
CUB softmax, fp32 inside whatever the logits' dtype). q is scaled before the first product, so fp16
logits hold scale · q·kᵀ (as diffusers computes them) rather than values √d times larger.
"""
import numpy as np

from common.jittor_env import load_jittor
from common.sd.layers import Declared

jt = load_jittor()
nn = jt.nn

QUERY_BLOCK = 128  # queries per task: 128 x 4096 fp32 logits = 2 MiB per thread

_HEADER = r'''
#include <cmath>
#include <cstdint>
#include <algorithm>
extern "C" int dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
    const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
'''

_SOURCE = r'''
    const int64_t B = in0_shape0, N = in0_shape1, C = in0_shape2, M = in1_shape1;
    const int64_t heads = data["heads"], block = data["block"], d = C / heads;
    const float scale = data["scale"];
    const bool causal = data["causal"];
    const int64_t kv_stride = in1_shape0 == 1 ? 0 : M * C;
    const int64_t n_blocks = (N + block - 1) / block, tasks = B * heads * n_blocks;
    #pragma omp parallel
    {
        float* s = new float[block * M];
        #pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < tasks; t++) {
            const int64_t b = t / (heads * n_blocks), h = (t / n_blocks) % heads, r0 = (t % n_blocks) * block;
            const int64_t rows = std::min(block, N - r0);
            const float* q = in0_p + b * N * C + r0 * C + h * d;
            const float* k = in1_p + b * kv_stride + h * d;
            const float* v = in2_p + b * kv_stride + h * d;
            dnnl_sgemm('N', 'T', rows, M, d, scale, q, C, k, C, 0.f, s, M);
            for (int64_t r = 0; r < rows; r++) {
                float* x = s + r * M;
                const int64_t seen = causal ? std::min(M, r0 + r + 1) : M;  // causal: keys <= the query
                float mx = x[0];
                for (int64_t j = 1; j < seen; j++) mx = std::max(mx, x[j]);
                float sum = 0.f;
                #pragma omp simd reduction(+:sum)
                for (int64_t j = 0; j < seen; j++) { const float e = expf(x[j] - mx); x[j] = e; sum += e; }
                const float inv = 1.f / sum;
                #pragma omp simd
                for (int64_t j = 0; j < seen; j++) x[j] *= inv;
                for (int64_t j = seen; j < M; j++) x[j] = 0.f;
            }
            dnnl_sgemm('N', 'N', rows, d, M, 1.f, s, M, v, C, 0.f, out0_p + b * N * C + r0 * C + h * d, C);
        }
        delete[] s;
    }
'''


def fused_cpu_available() -> bool:
    """The fused kernel needs the CPU and oneDNN (its sgemm is preloaded by common.jittor_env)."""
    return not jt.flags.use_cuda and jt.compile_extern.mkl_ops is not None


def _attention_fused_cpu(q, k, v, heads, scale, causal):
    q, k, v = (x.float32() for x in (q, k, v))
    return jt.code(q.shape, "float32", [q, k, v], cpu_header=_HEADER, cpu_src=_SOURCE,
                   data={"heads": heads, "block": QUERY_BLOCK, "scale": float(scale), "causal": int(causal)})


def _attention_generic(q, k, v, heads, scale, upcast, causal=False):
    """Batched-matmul attention (cuBLAS on CUDA). Logits are fp32 when upcast (q and k cast first) or fp32
    input, else in the input dtype; the softmax computes in fp32 either way and gives probabilities in v's."""
    b, n, c = q.shape
    m, d = k.shape[1], c // heads
    if k.shape[0] != b:
        k, v = k.broadcast((b, m, c)), v.broadcast((b, m, c))

    def split(x):
        return x.reshape((b, x.shape[1], heads, d)).transpose((0, 2, 1, 3)).reshape((b * heads, x.shape[1], d))

    qh, kh, vh = split(q), split(k), split(v)
    if upcast:
        qh, kh = qh.float32(), kh.float32()
    logits = nn.bmm_transpose(qh * scale, kh)  # scaled first: an fp16 product must not hold q·kᵀ unscaled
    if causal:  # query i sees keys <= i
        logits = logits.float32() + jt.array(np.triu(np.full((n, m), -1e30, dtype=np.float32), k=1))
    probs = nn.softmax(logits, dim=-1).cast(v.dtype)  # on CUDA one kernel; elsewhere fp32 max/exp/sum ops
    out = nn.bmm(probs, vh)
    return out.reshape((b, heads, n, d)).transpose((0, 2, 1, 3)).reshape((b, n, c))


def attention(q, k, v, heads, scale, upcast=False, causal=False):
    """softmax(scale · q kᵀ) v per head. q: (B, N, C); k, v: (B or 1, M, C), batch 1 broadcast → (B, N, C).

    `scale` is an argument so StyleID can fold its temperature in (T/√d); `causal` lets query i see only
    keys <= i (the CLIP text encoder).
    """
    if q.ndim != 3 or k.ndim != 3 or q.shape[2] != k.shape[2] or k.shape != v.shape or q.shape[2] % heads:
        raise ValueError(f"attention: bad shapes q {q.shape} k {k.shape} v {v.shape} for {heads} heads")
    if k.shape[0] not in (1, q.shape[0]):
        raise ValueError(f"attention: k/v batch {k.shape[0]} is neither 1 nor q's batch {q.shape[0]}")
    if fused_cpu_available():
        return _attention_fused_cpu(q, k, v, heads, scale, causal).cast(q.dtype)
    return _attention_generic(q, k, v, heads, scale, upcast, causal)


class AttnProcessor:
    """The plain processor: project, attend, project out."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        return attn.project_out(attention(q, k, v, attn.heads, attn.scale, attn.upcast))


class Attention(Declared):
    """diffusers' Attention (`architecture.attention`): to_q/to_k/to_v/to_out.0; to_out.1 is inference-time
    Dropout. `name` is its diffusers path, set by the UNet."""

    def __init__(self, declaration):
        super().__init__(declaration)
        self.name = ""
        self.processor = AttnProcessor()

    def project_out(self, hidden_states):
        return self.to_out[0](hidden_states)

    def execute(self, hidden_states, encoder_hidden_states=None):
        return self.processor(self, hidden_states, encoder_hidden_states)
