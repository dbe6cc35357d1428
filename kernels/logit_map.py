"""LogitMap: what is done to the head's logits before the softmax, the same on every path.

    z = h W^T (+ b)                       the head's logits
    s = c tanh(z / c)                     logit soft-capping with cap c (Gemma 2's
                                          final_logit_softcapping), when softcap is set
    u = s / T                             sampling temperature T (TRL's GRPO/online DPO
                                          divide the logits by it before log_softmax)
    log p(y) = u_y - logsumexp(u)

Backward: dL/dz = dL/du * (1 / T) * (1 - (s / c)^2), since d tanh(x)/dx = 1 - tanh(x)^2.

The Triton kernels apply the same map in their epilogues (`triton_rows.tl_map`, `tl_map_grad`),
guarded by constexprs, so the identity map compiles to exactly the kernels without it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch


class LogitMap(NamedTuple):
    temperature: float = 1.0
    softcap: float | None = None

    @property
    def identity(self) -> bool:
        return self.temperature == 1.0 and self.softcap is None

    def check(self) -> LogitMap:
        """self, or a ValueError naming the bad value."""
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if self.softcap is not None and not (isinstance(self.softcap, (int, float)) and math.isfinite(self.softcap)
                                             and self.softcap > 0):
            raise ValueError(f"softcap must be None or a finite number > 0, got {self.softcap!r}")
        return self

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """u = map(z), in z's dtype (a new tensor unless the map is the identity)."""
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        if self.temperature != 1.0:
            z = z / self.temperature
        return z

    def grad_(self, du: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """dL/dz from dL/du and u = map(z), in place in du: du / T * (1 - (u T / c)^2)."""
        if self.softcap is not None:
            t = u * (self.temperature / self.softcap)  # = tanh(z / c)
            du.mul_(1.0 - t * t)
        if self.temperature != 1.0:
            du.div_(self.temperature)
        return du

    def kernel_args(self) -> dict:
        """The constexprs and scalars of `triton_rows.tl_map` / `tl_map_grad` for a kernel launch."""
        return dict(SOFTCAP=self.softcap is not None, TEMPER=self.temperature != 1.0,
                    cap=float(self.softcap or 1.0), inv_t=1.0 / float(self.temperature))


IDENTITY = LogitMap()
