"""Video -> frames with one frame-index formula for every backend, the manifest, and the loaders.

    read_frames(source, F) -> uint8 [F, H, W, 3] RGB, frames at np.linspace(0, n-1, F, dtype=int)

Modules (imports go down this list, never up):
    common       VideoDecodeError, VideoInfo, frame_indices, input checks, the deadline
    pyav         the PyAV backend and probe (n for every backend)
    frames       frame folders (images read with PyAV)
    decord, torchcodec, dali
                 optional backends (absolute imports: they load the libraries of the same name)
    read         read_frames / read_frames_at / probe / count_frames: dispatch over backends
    manifest     frame counts probed once and cached; resolve_video (dataset layouts)
    loader       ClipLoader (CPU worker processes); shard_groups / shard_records, THE sharding rule
    preprocess   resize + crop + normalize in torch (what adapters' `pixels` calls)
    dali_loader  DaliClipLoader: batched DALI decode + preprocess on the device
The names in __all__ below are importable from this package itself. The backends' own functions
are reached through `read` (or their modules); preprocess and dali_loader import torch at import
time and are imported by module name (isrt.engine.video.dali_loader.DaliClipLoader).
See docs/video.md.
"""
from .common import DEFAULT_MAX_PIXELS, DEFAULT_TIMEOUT_S, VideoDecodeError, VideoInfo, frame_indices
from .dali import NVDEC_MIN_SIZE, nvdec_can_decode
from .frames import IMAGE_EXTS, list_frame_images
from .loader import Clip, ClipDataset, ClipLoader, LoaderStats, shard_groups, shard_records
from .manifest import ManifestEntry, VideoManifest, build_manifest, manifest_for_jsonl, resolve_video
from .read import available_backends, count_frames, probe, read_frames, read_frames_at

__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_TIMEOUT_S", "IMAGE_EXTS", "NVDEC_MIN_SIZE",
    "Clip", "ClipDataset", "ClipLoader", "LoaderStats", "ManifestEntry", "VideoDecodeError",
    "VideoInfo", "VideoManifest", "available_backends", "build_manifest", "count_frames",
    "frame_indices", "list_frame_images", "manifest_for_jsonl", "nvdec_can_decode", "probe",
    "read_frames", "read_frames_at", "resolve_video", "shard_groups", "shard_records",
]
