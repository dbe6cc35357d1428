"""KernelOptions: how the Triton backend computes, one frozen value passed down to every kernel call.

The defaults are what ships, chosen by the GPU benchmark (see docs/kernels.md, "Design that
ships"). They change speed and memory, and results only by rounding; they are read at call time,
never from the environment. The torch backend takes no options.

    from isrt.kernels import KernelOptions, fused_linear_dpo
    fused_linear_dpo(..., options=KernelOptions(schedule="two", impl="tile"))
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

IMPLS = ("cublas", "tile")
SCHEDULES = ("single", "two")
DW_ACCUMS = ("auto", "fp32", "compensated", "native")


@dataclass(frozen=True)
class KernelOptions:
    """Implementation choices of the Triton backend (defaults = the shipped design).

    impl               which kernel produces the logits: "cublas" (cuBLAS GEMM + Triton row
                       kernels) or "tile" (Triton matmul with fused log-sum-exp / dZ epilogues).
    schedule           `fused_linear_dpo`: "single" (loss and gradients in one sweep over chunks
                       of whole pairs, 6NHV) or "two" (`linear_logprobs` + recompute, 8NHV).
    chunk_bytes        two-pass schedule: bytes of one [rows, vocabulary chunk] logits buffer.
    single_pass_bytes  single-pass schedule: extra memory of one call (logits chunk, row copies
                       and, when chosen, the fp32 dW accumulator).
    single_pass_max_bytes  single-pass schedule: how far that may grow so that the longest pair
                       fits one chunk whole (its logits kept: 6NHV, where the two-pass route
                       would recompute them, 8NHV). At V = 152,064, H = 4096, bf16, rows of
                       4,096 tokens make pairs of 8,192 label rows: 2.45 GiB of logits and row
                       copies, plus the 0.64 GiB compensated dW accumulator, which the default
                       3,328 MiB holds. A pair that needs more takes the two-pass route alone;
                       single_pass_bytes or less: never grow.
    dw_accum           single-pass dW across chunks: "fp32" (an fp32 [V, H] accumulator),
                       "compensated" (bf16 + an int8 residual: one rounding, 1 byte per weight),
                       "native" (in the weight's dtype, one rounding per chunk), "auto" (fp32 when
                       it needs at most half of single_pass_bytes, else compensated for bf16).
    tile_config        impl "tile": one config's kwargs (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
                       num_warps, num_stages) run instead of autotuning; None = autotune.
    """
    impl: str = "cublas"
    schedule: str = "single"
    chunk_bytes: int = 512 << 20
    single_pass_bytes: int = 960 << 20
    single_pass_max_bytes: int = 3328 << 20
    dw_accum: str = "auto"
    tile_config: dict | None = field(default=None, hash=False)  # a dict cannot be hashed

    def __post_init__(self):
        for name, allowed in (("impl", IMPLS), ("schedule", SCHEDULES), ("dw_accum", DW_ACCUMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        for name in ("chunk_bytes", "single_pass_bytes", "single_pass_max_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


DEFAULT_OPTIONS = KernelOptions()


def triton_interpreting() -> bool:
    """Triton's own switch (TRITON_INTERPRET=1: kernels run on CPU tensors, in Python); read at
    each call, as Triton reads it when a kernel is defined."""
    return os.environ.get("TRITON_INTERPRET") == "1"
