"""Frame preprocessing in plain torch (no torchvision, no HF image/video processor).

HF's video processors need torchvision, which does not load next to our CPU torch wheel, and
doing this on the device is faster anyway: uint8 frames go to the device (4x fewer bytes than
float), then resize + crop + normalize run there.

    x = preprocess_frames(frames_uint8_FHW3, size=224, mean=CLIP_MEAN, std=CLIP_STD, device=dev)

Steps (CLIP-style, as Video-LLaVA's processor does them):
1. resize so the SHORTER side equals `size` (aspect kept; long side = round(size * long/short)),
   bilinear with antialias (torch's antialiased bilinear follows PIL's filter, so downscaling
   does not alias). HF's CLIP processor uses bicubic here; the difference is small and we
   document it rather than hide it.
2. center crop `size` x `size` (offset floor((L - size) / 2) on each axis);
3. x / 255, then (x - mean) / std per channel. Computed in fp32, cast to `dtype` at the end.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# OpenAI CLIP statistics (LanguageBind's video tower and HF's CLIPImageProcessor use them).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H', W') of step 1: min(H', W') == size, long side round(size * long / short), never
    below size; (H, W) itself when the shorter side already is size. DaliClipLoader resizes to
    exactly this size too."""
    h, w = int(height), int(width)
    if min(h, w) == size:
        return h, w
    if h <= w:
        return size, max(size, int(round(size * w / h)))
    return max(size, int(round(size * h / w))), size


def resize_shorter_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """x float [N,C,H,W] -> [N,C,H',W'] with min(H',W') == size (bilinear, antialias)."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    return F.interpolate(x, size=shorter_side_size(h, w, size), mode="bilinear", antialias=True,
                         align_corners=False)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """x [..., H, W] with H, W >= size -> [..., size, size]."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def preprocess_frames(frames, size: int, mean=CLIP_MEAN, std=CLIP_STD, *, device="cpu",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """frames: uint8 RGB [F,H,W,3] (numpy array or torch tensor) -> `dtype` [F,3,size,size] on `device`.

    Raises ValueError with the offending shape/dtype for anything else.
    """
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB [F,H,W,3], got dtype {frames.dtype}")
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    elif not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be a uint8 numpy array or tensor [F,H,W,3], got {type(frames).__name__}"
                         f"{'' if not hasattr(frames, 'dtype') else ' of ' + str(frames.dtype)}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 RGB [F,H,W,3], got shape {tuple(frames.shape)}")
    x = frames.to(device, non_blocking=True).permute(0, 3, 1, 2).float()  # [F,3,H,W], 0..255
    x = center_crop(resize_shorter_side(x, size), size)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = (x / 255.0 - m) / s
    return x.to(dtype).contiguous()
