"""Why `core.transformer.attend` does not use the fused kernel for bf16 on a CPU.

Forward + backward of attention at the sentiment benchmark's shape (batch 32, 4 heads, 128 tokens, head dim 64),
through `F.scaled_dot_product_attention` and through three plain ops (matmul, softmax in float32, matmul), in
float32 and bfloat16, side by side in one process.

    python bench/attention_cpu.py
"""

import statistics
import time

import torch
import torch.nn.functional as F


def plain(q, k, v, mask):
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1, dtype=torch.float32).to(q.dtype) @ v


def fused(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def ms_per_call(fn, q, k, v, mask, reps: int = 15) -> float:
    def once():
        fn(q, k, v, mask).sum().backward()

    once()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    mask = torch.ones(32, 1, 1, 128, dtype=torch.bool)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; (32, 4, 128, 64), forward + backward")
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(32, 4, 128, 64, dtype=dtype, requires_grad=True) for _ in range(3))
        f, p = ms_per_call(fused, q, k, v, mask), ms_per_call(plain, q, k, v, mask)
        print(f"{str(dtype):15s} fused SDPA {f:6.1f} ms   plain matmuls {p:6.1f} ms   fused/plain {f / p:.2f}")


if __name__ == "__main__":
    main()
