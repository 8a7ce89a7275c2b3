"""Attention that carries a gradient, for training, without keeping the attention matrix.

The fused CPU kernel of `common.sd.attention` has no backward (a `jt.code` op without one passes no
gradient at all), and Jittor's autograd through plain ops keeps several (heads x N x M) float32 tensors
per attention until the backward pass: gigabytes at SD's 4096 tokens. Both ways here keep only q, k, v,
the output O and, per query row, L = log Σ exp(s) of its logits s = scale·q·kᵀ, and recompute the
probabilities P = exp(s − L) in the backward pass (as flash attention does). With dO the output's
gradient and D = rowsum(dO ⊙ O):
    dV = Pᵀ·dO,   dS = P ⊙ (dO·Vᵀ − D),   dQ = scale·dS·K,   dK = scale·dSᵀ·Q.
- CPU with oneDNN: one forward and one backward kernel, per (batch, head) a loop over blocks of query
  rows with oneDNN sgemm (heads read in place, logits one block at a time, as the inference kernel).
- elsewhere (CUDA): the same formulas in Jittor ops on one attention at a time (cuBLAS batched matmul).
"""
from common.jittor_env import load_jittor
from common.sd.attention import _HEADER, QUERY_BLOCK, _attention_generic, fused_cpu_available

jt = load_jittor()
nn = jt.nn

_FORWARD = r'''
    const int64_t B = in0_shape0, N = in0_shape1, C = in0_shape2, M = in1_shape1;
    const int64_t heads = data["heads"], block = data["block"], d = C / heads;
    const float scale = data["scale"];
    const int64_t n_blocks = (N + block - 1) / block, tasks = B * heads * n_blocks;
    #pragma omp parallel
    {
        float* s = new float[block * M];
        #pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < tasks; t++) {
            const int64_t b = t / (heads * n_blocks), h = (t / n_blocks) % heads, r0 = (t % n_blocks) * block;
            const int64_t rows = std::min(block, N - r0);
            const float* q = in0_p + b * N * C + r0 * C + h * d;
            const float* k = in1_p + b * M * C + h * d;
            const float* v = in2_p + b * M * C + h * d;
            float* lse = out1_p + (b * heads + h) * N + r0;
            dnnl_sgemm('N', 'T', rows, M, d, scale, q, C, k, C, 0.f, s, M);
            for (int64_t r = 0; r < rows; r++) {
                float* x = s + r * M;
                float mx = x[0];
                for (int64_t j = 1; j < M; j++) mx = std::max(mx, x[j]);
                float sum = 0.f;
                #pragma omp simd reduction(+:sum)
                for (int64_t j = 0; j < M; j++) { const float e = expf(x[j] - mx); x[j] = e; sum += e; }
                const float inv = 1.f / sum;
                #pragma omp simd
                for (int64_t j = 0; j < M; j++) x[j] *= inv;
                lse[r] = mx + logf(sum);
            }
            dnnl_sgemm('N', 'N', rows, d, M, 1.f, s, M, v, C, 0.f, out0_p + b * N * C + r0 * C + h * d, C);
        }
        delete[] s;
    }
'''

# in0 q, in1 k, in2 v, in3 O, in4 L (B, heads, N), in5 dO; out0 dQ, out1 dK, out2 dV. One task per
# (batch, head) owns its columns of dK and dV, so the query blocks of that head add into them in order.
_BACKWARD = r'''
    const int64_t B = in0_shape0, N = in0_shape1, C = in0_shape2, M = in1_shape1;
    const int64_t heads = data["heads"], block = data["block"], d = C / heads;
    const float scale = data["scale"];
    #pragma omp parallel
    {
        float* p = new float[block * M];
        float* ds = new float[block * M];
        #pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < B * heads; t++) {
            const int64_t b = t / heads, h = t % heads;
            const float* k = in1_p + b * M * C + h * d;
            const float* v = in2_p + b * M * C + h * d;
            float* dk = out1_p + b * M * C + h * d;
            float* dv = out2_p + b * M * C + h * d;
            for (int64_t r0 = 0; r0 < N; r0 += block) {
                const int64_t rows = std::min(block, N - r0);
                const float* q = in0_p + b * N * C + r0 * C + h * d;
                const float* o = in3_p + b * N * C + r0 * C + h * d;
                const float* lse = in4_p + (b * heads + h) * N + r0;
                const float* dout = in5_p + b * N * C + r0 * C + h * d;
                dnnl_sgemm('N', 'T', rows, M, d, scale, q, C, k, C, 0.f, p, M);
                dnnl_sgemm('N', 'T', rows, M, d, 1.f, dout, C, v, C, 0.f, ds, M);
                for (int64_t r = 0; r < rows; r++) {
                    float* pr = p + r * M;
                    float* dr = ds + r * M;
                    const float l = lse[r];
                    float D = 0.f;
                    for (int64_t c = 0; c < d; c++) D += dout[r * C + c] * o[r * C + c];
                    #pragma omp simd
                    for (int64_t j = 0; j < M; j++) { const float e = expf(pr[j] - l); pr[j] = e; dr[j] = e * (dr[j] - D); }
                }
                const float beta = r0 == 0 ? 0.f : 1.f;
                dnnl_sgemm('N', 'N', rows, d, M, scale, ds, M, k, C, 0.f, out0_p + b * N * C + r0 * C + h * d, C);
                dnnl_sgemm('T', 'N', M, d, rows, scale, ds, M, q, C, beta, dk, C);
                dnnl_sgemm('T', 'N', M, d, rows, 1.f, p, M, dout, C, beta, dv, C);
            }
        }
        delete[] p;
        delete[] ds;
    }
'''


def _split(x, heads):
    """(B, N, C) → (B·heads, N, C/heads)."""
    b, n, c = x.shape
    return x.reshape((b, n, heads, c // heads)).transpose((0, 2, 1, 3)).reshape((b * heads, n, c // heads))


def _merge(x, b, heads):
    """(B·heads, N, d) → (B, N, heads·d)."""
    _, n, d = x.shape
    return x.reshape((b, heads, n, d)).transpose((0, 2, 1, 3)).reshape((b, n, heads * d))


class _FusedCPU(jt.Function):
    def __init__(self, heads, scale):
        self.data = {"heads": heads, "block": QUERY_BLOCK, "scale": float(scale)}

    def execute(self, q, k, v):
        b, n, _ = q.shape
        out, lse = jt.code([q.shape, (b, self.data["heads"], n)], ["float32", "float32"], [q, k, v],
                           cpu_header=_HEADER, cpu_src=_FORWARD, data=self.data)
        self.saved = (q, k, v, out, lse)
        return out

    def grad(self, dout):
        if dout is None:
            return None, None, None
        q, k, v, out, lse = self.saved
        return jt.code([q.shape, k.shape, v.shape], ["float32"] * 3, [q, k, v, out, lse, dout.float32()],
                       cpu_header=_HEADER, cpu_src=_BACKWARD, data=self.data)


class _Recomputed(jt.Function):
    """The same recompute-in-backward scheme in Jittor ops (any device)."""

    def __init__(self, heads, scale):
        self.heads, self.scale = heads, float(scale)

    def _probs(self, qh, kh):
        logits = nn.bmm_transpose(qh, kh) * self.scale
        logits = logits - logits.max(dim=-1, keepdims=True)
        probs = logits.exp()
        return probs / probs.sum(dim=-1, keepdims=True)

    def execute(self, q, k, v):
        self.saved = (q, k, v)
        b = q.shape[0]
        qh, kh, vh = (_split(x, self.heads) for x in (q, k, v))
        return _merge(nn.bmm(self._probs(qh, kh), vh), b, self.heads)

    def grad(self, dout):
        if dout is None:
            return None, None, None
        q, k, v = self.saved
        b = q.shape[0]
        qh, kh, vh, dh = (_split(x, self.heads) for x in (q, k, v, dout.float32()))
        probs = self._probs(qh, kh)
        out = nn.bmm(probs, vh)
        dv = nn.bmm(probs.transpose((0, 2, 1)), dh)
        dp = nn.bmm_transpose(dh, vh)
        ds = probs * (dp - (dh * out).sum(dim=-1, keepdims=True))
        dq = nn.bmm(ds, kh) * self.scale
        dk = nn.bmm(ds.transpose((0, 2, 1)), qh) * self.scale
        return tuple(_merge(x, b, self.heads) for x in (dq, dk, dv))


def attention_with_grad(q, k, v, heads, scale, upcast=False, fused=None):
    """softmax(scale · q kᵀ) v per head in float32, differentiable in q, k and v.

    q: (B, N, C); k, v: (B, M, C) (batch 1 is broadcast). `fused` None picks the CPU kernel where it
    runs; False forces the Jittor-ops path (what CUDA uses).
    """
    if q.ndim != 3 or k.ndim != 3 or q.shape[2] != k.shape[2] or k.shape != v.shape or q.shape[2] % heads:
        raise ValueError(f"attention: bad shapes q {q.shape} k {k.shape} v {v.shape} for {heads} heads")
    dtype = q.dtype
    if k.shape[0] != q.shape[0]:
        k, v = k.broadcast((q.shape[0],) + tuple(k.shape[1:])), v.broadcast((q.shape[0],) + tuple(v.shape[1:]))
    q, k, v = q.float32(), k.float32(), v.float32()
    if fused is None:
        fused = fused_cpu_available()
    op = _FusedCPU(heads, scale) if fused else _Recomputed(heads, scale)
    return op(q, k, v).cast(dtype)


def attention_autograd(q, k, v, heads, scale):
    """The reference: Jittor's autograd through plain attention ops (keeps the attention matrices)."""
    return _attention_generic(q.float32(), k.float32(), v.float32(), heads, scale, True)

