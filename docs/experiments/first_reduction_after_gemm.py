"""Is the first reduction after a multi-threaded MKL GEMM bitwise reproducible across processes?

Run it many times in fresh processes and count distinct outputs (docs/reproducibility.md):

    for i in $(seq 1 30); do python docs/experiments/first_reduction_after_gemm.py; done | sort | uniq -c

Prints the hash of the GEMM's result, of the first logsumexp over it, and of a second
logsumexp of the same tensor in the same process.
"""
import hashlib

import torch


def digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.numpy().tobytes()).hexdigest()[:6]


g = torch.Generator().manual_seed(0)
hidden = torch.randn(7, 576, generator=g)
weight = torch.randn(49152, 576, generator=g) * 0.05
x = hidden.index_select(0, torch.tensor([0, 2, 3, 4, 5, 6]))  # the valid rows, as the kernel takes them
z = x @ weight.t()  # MKL sgemm
first = torch.logsumexp(z, 1)
second = torch.logsumexp(z, 1)
print(f"gemm {digest(z)} first-lse {digest(first)} second-lse {digest(second)}")
