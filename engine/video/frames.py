"""Frame folders (ShareGPTVideo / LLaVA-Hound style): one image per frame, read with PyAV (no
extra dependency), whatever the backend asked for.

n is the number of image files (jpg, jpeg, png, bmp, webp; hidden files ignored), frame i the
i-th in natural name order, so "f2.jpg" < "f10.jpg" and zero-padded names sort as usual.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import (Deadline, VideoDecodeError, VideoInfo, cause_of, check_manifest_count, check_pixels,
                     resolve_indices, stack_frames, unique_sorted)
from .pyav import rgb_converter, to_rgb

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_frame_images(folder: str | os.PathLike) -> list[Path]:
    """Image files of a frame folder in natural name order (hidden files ignored)."""
    folder = Path(folder)
    names = [e.name for e in os.scandir(folder)
             if e.is_file() and not e.name.startswith(".")
             and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS]
    return [folder / n for n in sorted(names, key=_natural_key)]


def _images_of(path: Path) -> list[Path]:
    """list_frame_images, or VideoDecodeError ("zero frames") for a folder without images."""
    files = list_frame_images(path)
    if not files:
        raise VideoDecodeError(path, f"zero frames (no {'/'.join(sorted(IMAGE_EXTS))} files in folder)")
    return files


def _decode_image(path: Path, rgb=None) -> np.ndarray:
    import av
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise VideoDecodeError(path, "not an image")
        for frame in c.decode(c.streams.video[0]):
            return to_rgb(rgb or rgb_converter(), frame)
    raise VideoDecodeError(path, "image decodes to no frame")


def _decode_image_checked(folder: Path, f: Path, rgb=None) -> np.ndarray:
    """uint8 [H, W, 3] of image `f`; any failure is a VideoDecodeError of the folder."""
    try:
        if f.stat().st_size == 0:
            raise VideoDecodeError(folder, f"frame {f.name}: zero-byte file")
        return _decode_image(f, rgb)
    except VideoDecodeError as e:
        if e.path == str(folder):
            raise
        raise VideoDecodeError(folder, f"frame {f.name}: {e.cause}") from None
    except Exception as e:  # noqa: BLE001 - any library failure becomes one error type
        raise VideoDecodeError(folder, f"frame {f.name}: {cause_of(e)}") from None


def probe_folder(path: Path) -> VideoInfo:
    """n (the image count) and the first image's size; codec "images", container "folder"."""
    files = _images_of(path)
    first = _decode_image_checked(path, files[0])
    h, w = first.shape[:2]
    return VideoInfo(str(path), len(files), 0.0, "images", w, h, "folder", 0.0)


def read_folder(path: Path, num_frames: int | None, indices: Sequence[int] | None,
                frame_count: int | None, max_pixels: int | None,
                deadline: Deadline) -> tuple[np.ndarray, int]:
    """(uint8 [F, H, W, 3] frames, n) of a frame folder; each image is checked against
    `max_pixels` as it is decoded."""
    files = _images_of(path)
    n = len(files)
    check_manifest_count(path, n, frame_count, "folder")
    idx = resolve_indices(path, n, num_frames, indices)
    decoded: dict[int, np.ndarray] = {}
    rgb = rgb_converter()
    for i in unique_sorted(idx):
        deadline.check()
        img = _decode_image_checked(path, files[i], rgb)
        check_pixels(path, img.shape[1], img.shape[0], max_pixels)
        decoded[i] = img
    return stack_frames(path, [decoded[int(i)] for i in idx]), n
