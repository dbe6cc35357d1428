"""DaliClipLoader: exact frame indices, adapter-equivalent pixels, records joined back, bad
videos counted and skipped, rank sharding.

Fixtures are synthetic clips whose pixels encode their frame index (isrt.engine.synthetic). With
image_size equal to the 64x64 clip side the resize is the identity and there is no crop, so the
loader's normalized output, unnormalized, still carries the index pattern: every test reads back
WHICH frame came out. CPU tests use VP9 (webm) and MJPEG (avi), the codecs DALI's CPU decoder
reads; H.264 through NVDEC is in the `gpu`-marked tests at the end.
"""
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from isrt.engine import synthetic as syn
from isrt.engine import video as V
from isrt.engine.video import manifest as M
from isrt.engine.video.dali import dali_available
from isrt.engine.video.preprocess import CLIP_MEAN, CLIP_STD

if not dali_available():
    pytest.skip("nvidia-dali is not installed (optional: nvidia-dali-cuda130==2.4.0)", allow_module_level=True)

from isrt.engine.adapters.base import VideoLMAdapter  # noqa: E402
from isrt.engine.video.dali_loader import DaliClipLoader, resize_geometry  # noqa: E402

# Tolerances, in 0..255 pixel units (normalized difference * std * 255).
# Same decoded frames (DALI's decoder), DALI resize/crop/normalize vs adapter.pixels: identity and
# upscaling agree to ~0.001. Downscaling (1.5x-3x here) agrees to ~1.2 everywhere except the
# resized image's LAST row/column, where DALI's antialiasing filter treats the far image edge
# differently from torch's (measured up to ~19 on hard black/white edges there); mean < 0.035.
RESIZE_INTERIOR_MAX, RESIZE_EDGE_MAX, RESIZE_MEAN = 2.0, 24.0, 0.05
# DALI's decoded RGB vs PyAV's (swscale): chroma upsampling and rounding differ; on these
# hard-edged synthetic clips mean ~1-1.5 levels, a few % of pixels far off at colour edges.
DECODER_MEAN = 3.0

N_BY_CLIP = {"w20.webm": 20, "a21.avi": 21, "w5.webm": 5, "a7.avi": 7}


def _clip(root, name, n, h=64, w=64, scene=0):
    c = "frames" if "." not in name else name.rsplit(".", 1)[1]
    frames = syn.render_frames(syn.make_scene(2, scene, h, w, True), n, h, w, index_pattern=True)
    return syn.write_video(root / name, frames, container=c)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """VP9/MJPEG clips of different lengths (two shorter than some F), H.264, GIF, a frame
    folder, non-square clips for the resize checks, and a zero-byte file."""
    r = tmp_path_factory.mktemp("dali")
    for k, (name, n) in enumerate(N_BY_CLIP.items()):
        _clip(r, name, n, scene=k)
    _clip(r, "h22.mp4", 22, scene=4)
    _clip(r, "g9.gif", 9, scene=5)
    _clip(r, "f6", 6, scene=6)
    for c in ("webm", "avi"):
        _clip(r, f"land.{c}", 12, 48, 80, scene=7)   # landscape: crop along W
        _clip(r, f"port.{c}", 12, 80, 48, scene=8)   # portrait: crop along H
    (r / "broken.webm").write_bytes(b"")
    return r


def _records(videos, k=2):
    return [{"id": f"{v}#{q}", "video": v, "prompt": "p"} for v in videos for q in range(k)]


def _unnormalize(px, mean=CLIP_MEAN, std=CLIP_STD):
    """float [F,3,S,S] normalized -> uint8 [F,S,S,3] (inverse of (x/255 - mean)/std)."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    x = (px.float().cpu() * s + m) * 255.0
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _indices(px):
    return [syn.decode_frame_index(f) for f in _unnormalize(px)]


def _loader(recs, F, root, **kw):
    kw.setdefault("image_size", 64)
    kw.setdefault("mean", CLIP_MEAN)
    kw.setdefault("std", CLIP_STD)
    kw.setdefault("batch_size", 3)
    kw.setdefault("device", "cpu")
    kw.setdefault("fallback", None)
    if "manifest" not in kw:
        kw["manifest"] = M.build_manifest([r["video"] for r in recs], root)
    return DaliClipLoader(recs, F, **kw)


def _adapter_pixels(frames, size, mean=CLIP_MEAN, std=CLIP_STD, device="cpu", dtype=torch.float32):
    """adapter.pixels itself (the method), on a stand-in holding only what it reads."""
    stub = SimpleNamespace(image_size=size, image_mean=mean, image_std=std,
                           device=torch.device(device), dtype=dtype)
    return VideoLMAdapter.pixels(stub, frames)


def _pixel_units(diff, std=CLIP_STD):
    return diff.abs().float().cpu() * torch.tensor(std).view(1, 3, 1, 1) * 255.0


@pytest.mark.parametrize("F", [1, 8, 16, 25])
def test_exact_frame_indices_vp9_and_mjpeg(root, F):
    """Every clip's frames are frame_indices(n, F) (F=8/16 exceed n for two clips, 25 for all)."""
    recs = _records(N_BY_CLIP)
    loader = _loader(recs, F, root)
    seen = []
    for batch in loader:
        assert batch.pixels.dtype == torch.float32 and batch.pixels.device.type == "cpu"
        assert tuple(batch.pixels.shape) == (len(batch), F, 3, 64, 64)
        for clip in batch.clips():
            n = N_BY_CLIP[clip.video]
            assert clip.num_video_frames == n
            assert _indices(clip.pixels) == list(np.linspace(0, n - 1, F, dtype=int)), clip.video
            seen.append(clip.video)
    assert seen == list(N_BY_CLIP)
    assert (loader.stats.clips_ok, loader.stats.clips_bad) == (4, 0)


def test_resize_geometry_is_preprocess_frames(root):
    """The per-sample resize target and crop offset are exactly what preprocess_frames does."""
    for h, w in [(48, 80), (80, 48), (64, 64), (720, 1280), (31, 97), (240, 320)]:
        for s in (16, 32, 48, 56, 224, 336):
            nh, nw, top, left = resize_geometry(h, w, s)
            x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
            from isrt.engine.video.preprocess import center_crop, resize_shorter_side
            r = resize_shorter_side(x, s)
            assert tuple(r.shape[-2:]) == (nh, nw), (h, w, s)
            marked = torch.zeros(1, 1, nh, nw)
            marked[..., top, left] = 1.0
            assert center_crop(marked, s)[..., 0, 0].item() == 1.0, (h, w, s)  # crop starts at (top, left)


@pytest.mark.parametrize("container", ["webm", "avi"])
@pytest.mark.parametrize("size", [32, 48, 56, 224])
def test_pixels_equal_adapter_pixels_within_tolerance(root, container, size):
    """Downscale (32), no resize + crop (48), upscale (56, 224), odd crop margins (53-32, 93-56),
    landscape and portrait: DALI's output vs adapter.pixels of the same decoded frames (tight),
    and vs adapter.pixels of PyAV's frames (decoder difference only)."""
    videos = [f"land.{container}", f"port.{container}"]
    loader = _loader(_records(videos, 1), 6, root, image_size=size)
    batches = list(loader)
    assert [c.video for b in batches for c in b.clips()] == videos
    for clip in batches[0].clips():
        path = root / clip.video
        assert tuple(clip.pixels.shape) == (6, 3, size, size)
        same = _pixel_units(clip.pixels - _adapter_pixels(V.read_frames(path, 6, backend="dali"), size))
        interior = same[..., :-1, :-1]  # the crop's last row/column may be the resize's far edge
        assert interior.max() <= RESIZE_INTERIOR_MAX, (clip.video, interior.max())
        assert same.max() <= RESIZE_EDGE_MAX and same.mean() <= RESIZE_MEAN, (clip.video, same.max(), same.mean())
        pyav = _pixel_units(clip.pixels - _adapter_pixels(V.read_frames(path, 6, backend="pyav"), size))
        assert pyav.mean() <= DECODER_MEAN, (clip.video, pyav.mean())


def test_other_statistics_and_dtype_from_adapter(root):
    """from_adapter takes num_frames, size, mean/std, dtype and device from the adapter."""
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)
    stub = SimpleNamespace(num_frames=4, image_size=40, image_mean=mean, image_std=std,
                           device=torch.device("cpu"), dtype=torch.bfloat16)
    recs = _records(["w20.webm"], 1)
    loader = DaliClipLoader.from_adapter(stub, recs, batch_size=2, fallback=None,
                                         manifest=M.build_manifest(["w20.webm"], root))
    (batch,) = list(loader)
    assert batch.pixels.dtype == torch.bfloat16 and tuple(batch.pixels.shape) == (1, 4, 3, 40, 40)
    ref = _adapter_pixels(V.read_frames(root / "w20.webm", 4, backend="dali"), 40, mean, std)
    d = _pixel_units(batch.pixels[0].float() - ref.float(), std)
    assert d.mean() <= RESIZE_MEAN + 1.0  # bf16 keeps 8 bits of mantissa: ~1/256 relative


def test_records_join_back_and_known_bad_videos_take_no_slot(root):
    videos = ["w20.webm", "broken.webm", "a21.avi", "h22.mp4", "missing.webm", "w5.webm", "a7.avi"]
    recs = _records(videos)
    recs.append({"id": "w20.webm#late", "video": "w20.webm", "prompt": "p"})  # joins its group
    loader = _loader(recs, 4, root, batch_size=2)
    batches = list(loader)
    # bad ones are dropped before batching, so the batches stay full
    assert [b.videos for b in batches] == [["w20.webm", "a21.avi"], ["w5.webm", "a7.avi"]]
    for b in batches:
        for clip in b.clips():
            expect = [f"{clip.video}#0", f"{clip.video}#1"] + (["w20.webm#late"] if clip.video == "w20.webm" else [])
            assert [r["id"] for r in clip.records] == expect
            assert _indices(clip.pixels) == list(V.frame_indices(N_BY_CLIP[clip.video], 4))
    s = loader.stats
    assert (s.clips_ok, s.clips_bad, s.records_ok, s.records_bad) == (4, 3, 9, 6)
    assert set(s.bad_videos) == {"broken.webm", "h22.mp4", "missing.webm"}
    assert s.bad_videos["broken.webm"] == "zero-byte file"
    assert s.bad_videos["h22.mp4"].startswith("dali (cpu) cannot decode codec h264")
    for e in s.errors:
        assert "\n" not in e and e.startswith(f"video {root}")


def test_decode_failures_in_a_batch_are_counted_and_skipped(root, tmp_path):
    """Files that pass the manifest but fail inside DALI: garbage bytes, and a clip now shorter
    than the manifest's n (an index past DALI's end must be an error, never a padded frame).
    The rest of their batches still comes out, with the right frames."""
    for name in ("w20.webm", "a21.avi", "w5.webm", "a7.avi"):
        shutil.copy(root / name, tmp_path / name)
    shutil.copy(root / "w20.webm", tmp_path / "garbage.webm")
    shutil.copy(root / "a21.avi", tmp_path / "shrunk.avi")
    videos = ["w20.webm", "garbage.webm", "a21.avi", "shrunk.avi", "w5.webm", "a7.avi"]
    recs = _records(videos)
    man = M.build_manifest(videos, tmp_path)
    (tmp_path / "garbage.webm").write_text("not a video\n" * 200)
    _clip(tmp_path, "shrunk.avi", 9, scene=9)  # the manifest still says 21 frames
    loader = _loader(recs, 8, tmp_path, manifest=man, batch_size=4)
    batches = list(loader)
    assert [b.videos for b in batches] == [["w20.webm", "a21.avi"], ["w5.webm", "a7.avi"]]
    for b in batches:
        assert tuple(b.pixels.shape) == (2, 8, 3, 64, 64)
        for clip in b.clips():
            assert _indices(clip.pixels) == list(V.frame_indices(N_BY_CLIP[clip.video], 8))
    s = loader.stats
    assert (s.clips_ok, s.clips_bad, s.records_bad) == (4, 2, 4)
    assert set(s.bad_videos) == {"garbage.webm", "shrunk.avi"}
    for v, cause in s.bad_videos.items():
        assert cause.startswith("dali: ") and "\n" not in cause, cause
    # a second pass starts from fresh counts and finds the same
    assert [b.videos for b in loader] == [b.videos for b in batches]
    assert (loader.stats.clips_ok, loader.stats.clips_bad) == (4, 2)


def test_files_gone_since_the_manifest_are_counted(root, tmp_path):
    """A file deleted after the manifest was built is counted when its batch is fed: a batch
    with no readable file runs nothing, a batch with one runs without it."""
    for name in ("w20.webm", "a21.avi", "w5.webm"):
        shutil.copy(root / name, tmp_path / name)
    gone = {"gone1.webm": "w5.webm", "gone2.avi": "a7.avi", "gone3.webm": "w20.webm"}
    for name, src in gone.items():
        shutil.copy(root / src, tmp_path / name)
    videos = ["gone1.webm", "gone2.avi", "w20.webm", "a21.avi", "w5.webm", "gone3.webm"]
    man = M.build_manifest(videos, tmp_path)
    for name in gone:
        (tmp_path / name).unlink()
    loader = _loader(_records(videos), 8, tmp_path, manifest=man, batch_size=2)
    batches = list(loader)
    assert [b.videos for b in batches] == [["w20.webm", "a21.avi"], ["w5.webm"]]
    assert _indices(batches[1].pixels[0]) == list(V.frame_indices(5, 8))
    assert loader.stats.bad_videos == {name: "cannot read: No such file or directory" for name in gone}
    assert (loader.stats.clips_ok, loader.stats.records_bad) == (3, 6)


def test_fallback_decodes_what_dali_cannot_on_the_host(root):
    """H.264 on the CPU, GIF and a frame folder go through read_frames + preprocess_frames,
    in plan order within their batches; their pixels equal adapter.pixels exactly."""
    videos = ["h22.mp4", "w20.webm", "g9.gif", "f6", "a7.avi"]
    loader = _loader(_records(videos, 1), 8, root, fallback="auto", batch_size=3)
    batches = list(loader)
    assert [b.videos for b in batches] == [["h22.mp4", "w20.webm", "g9.gif"], ["f6", "a7.avi"]]
    n = {"h22.mp4": 22, "g9.gif": 9, "f6": 6, **N_BY_CLIP}
    for b in batches:
        for clip in b.clips():
            assert _indices(clip.pixels) == list(V.frame_indices(n[clip.video], 8)), clip.video
            if clip.video in ("h22.mp4", "g9.gif", "f6"):
                ref = _adapter_pixels(V.read_frames(root / clip.video, 8), 64)
                torch.testing.assert_close(clip.pixels, ref, rtol=0, atol=1e-6)
    assert (loader.stats.clips_ok, loader.stats.clips_bad) == (5, 0)


def test_sharding_by_rank_covers_every_video_once(root):
    """Without a manifest each rank probes only its own videos (under video_root); together
    the ranks yield every good video exactly once, in ClipLoader's shards."""
    videos = ["w20.webm", "a21.avi", "w5.webm", "a7.avi", "land.webm", "port.avi", "broken.webm"]
    recs = _records(videos)
    seen, bad = [], []
    for rank in range(3):
        loader = DaliClipLoader(recs, 2, image_size=32, mean=CLIP_MEAN, std=CLIP_STD, batch_size=2,
                                video_root=root, rank=rank, world_size=3, device="cpu", fallback=None)
        got = [v for b in loader for v in b.videos]
        clip_loader = V.ClipLoader(recs, 2, video_root=root, rank=rank, world_size=3, num_workers=0)
        assert got == [g for g, _ in clip_loader.groups if g != "broken.webm"]
        assert len(loader.manifest) == len(loader.groups)  # probed its own shard only
        seen += got
        bad += list(loader.stats.bad_videos)
    assert sorted(seen) == sorted(v for v in videos if v != "broken.webm")
    assert bad == ["broken.webm"]
    with pytest.raises(ValueError):
        DaliClipLoader(recs, 2, image_size=32, mean=CLIP_MEAN, std=CLIP_STD, batch_size=2,
                       rank=3, world_size=3, device="cpu")


def test_bad_arguments():
    kw = dict(image_size=32, mean=CLIP_MEAN, std=CLIP_STD, batch_size=2, device="cpu")
    for bad in (dict(batch_size=0), dict(image_size=0), dict(device="tpu"), dict(std=(1, 0, 1)),
                dict(mean=(0.5,)), dict(prefetch_queue_depth=0)):
        with pytest.raises(ValueError):
            DaliClipLoader([], 4, **{**kw, **bad})
    with pytest.raises(ValueError):
        DaliClipLoader([], 0, **kw)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            DaliClipLoader([], 4, **{**kw, "device": "gpu"})


# --- GPU (NVDEC, device="gpu"): run on a CUDA machine with DALI installed --------------------
# NVDEC refuses frames below a per-codec minimum (VP9 128x128, H.264 48x16), so the
# GPU fixtures are 160x160 (image_size 160: identity resize, the index pattern read back as on
# the CPU) plus 144x240 / 240x144 clips for the resize checks; the 64x64 VP9 clip of the CPU
# fixtures is the too-small case.

GPU_SIDE = 160
GPU_N = {"h22.mp4": 22, "h30.mkv": 30, "w20.webm": 20, "a21.avi": 21, "w5.webm": 5}


@pytest.fixture(scope="module")
def gpu_root(tmp_path_factory):
    r = tmp_path_factory.mktemp("dali_gpu")
    for k, (name, n) in enumerate(GPU_N.items()):  # h30.mkv: H.264 in Matroska (B-frames, g=16)
        _clip(r, name, n, GPU_SIDE, GPU_SIDE, scene=10 + k)
    _clip(r, "land.webm", 12, 144, 240, scene=7)   # landscape: crop along W
    _clip(r, "port.mkv", 12, 240, 144, scene=8)    # portrait: crop along H
    _clip(r, "tiny.webm", 20, 64, 64, scene=9)     # VP9 below NVDEC's 128x128
    return r


def _gpu_loader(recs, F, root, **kw):
    kw.setdefault("image_size", GPU_SIDE)
    return _loader(recs, F, root, device="gpu", device_id=0, **kw)


@pytest.mark.gpu
@pytest.mark.parametrize("F", [1, 8, 16, 40])
def test_gpu_exact_frame_indices_h264_and_others(gpu_root, F):
    """H.264 (mp4, mkv; B-frames) and VP9 through NVDEC, MJPEG (which DALI's GPU decoder does not
    read) through the host fallback in the same batches: exact indices (repeats for F > n),
    float32 on cuda:0, batches joined back."""
    videos = list(GPU_N)
    loader = _gpu_loader(_records(videos), F, gpu_root, fallback="pyav")
    assert [it.video for b in loader._plan() for it in b.items if not it.dali] == ["a21.avi"]
    got = []
    for batch in loader:
        assert batch.pixels.device == torch.device("cuda", 0) and batch.pixels.dtype == torch.float32
        assert tuple(batch.pixels.shape) == (len(batch), F, 3, GPU_SIDE, GPU_SIDE)
        for clip in batch.clips():
            assert _indices(clip.pixels) == list(V.frame_indices(GPU_N[clip.video], F)), clip.video
            got.append(clip.video)
    assert got == videos and loader.stats.clips_bad == 0, loader.stats.errors


@pytest.mark.gpu
@pytest.mark.parametrize("size", [32, 56, 224])
def test_gpu_pixels_close_to_pyav_and_adapter_pixels(gpu_root, size):
    """NVDEC frames vs PyAV's, both through adapter.pixels on the GPU: the decoder difference
    stays within DECODER_MEAN; vs the same loader on the CPU path (same DALI resize semantics)
    for VP9, within the two decoders' difference."""
    videos = ["h22.mp4", "land.webm", "port.mkv"]
    loader = _gpu_loader(_records(videos, 1), 8, gpu_root, image_size=size)
    (batch,) = list(loader)
    assert batch.videos == videos
    for clip in batch.clips():
        assert tuple(clip.pixels.shape) == (8, 3, size, size)
        ref = _adapter_pixels(V.read_frames(gpu_root / clip.video, 8, backend="pyav"), size, device="cuda:0")
        d = _pixel_units(clip.pixels - ref)
        assert d.mean() <= DECODER_MEAN, (clip.video, d.mean())
    cpu = _loader(_records(["land.webm"], 1), 8, gpu_root, device="cpu", image_size=size)
    (cb,) = list(cpu)
    d = _pixel_units(batch.pixels[1].cpu() - cb.pixels[0])
    assert d.mean() <= DECODER_MEAN, d.mean()


@pytest.mark.gpu
def test_gpu_bad_video_in_batch_is_counted_and_skipped(gpu_root, tmp_path):
    """Garbage that passed the manifest fails inside NVDEC's batch; the batch is re-run clip by
    clip, the good clips come out with the right frames, and the next pass works again."""
    for name in ("h22.mp4", "w20.webm"):
        shutil.copy(gpu_root / name, tmp_path / name)
    shutil.copy(gpu_root / "h22.mp4", tmp_path / "garbage.mp4")
    videos = ["h22.mp4", "garbage.mp4", "w20.webm"]
    man = M.build_manifest(videos, tmp_path)
    (tmp_path / "garbage.mp4").write_text("not a video\n" * 200)
    loader = _gpu_loader(_records(videos), 8, tmp_path, manifest=man, batch_size=3)
    for _ in range(2):
        (batch,) = list(loader)
        assert batch.videos == ["h22.mp4", "w20.webm"]
        for clip in batch.clips():
            assert _indices(clip.pixels) == list(V.frame_indices(GPU_N[clip.video], 8))
        assert list(loader.stats.bad_videos) == ["garbage.mp4"]
        assert loader.stats.bad_videos["garbage.mp4"].startswith("dali: ")


@pytest.mark.gpu
def test_gpu_too_small_for_nvdec_takes_the_fallback_or_is_counted(gpu_root):
    """64x64 VP9 is below NVDEC's minimum: decoded on the host with fallback="auto" (exact
    frames, in plan order), counted bad with the reason when fallback=None."""
    videos = ["h22.mp4", "tiny.webm"]
    loader = _gpu_loader(_records(videos, 1), 8, gpu_root, image_size=64, fallback="auto")
    (batch,) = list(loader)
    assert batch.videos == videos and batch.pixels.device == torch.device("cuda", 0)
    assert _indices(batch.pixels[1]) == list(V.frame_indices(20, 8))
    strict = _gpu_loader(_records(videos, 1), 8, gpu_root, image_size=64, fallback=None)
    assert [b.videos for b in strict] == [["h22.mp4"]]
    assert strict.stats.bad_videos["tiny.webm"].endswith("NVDEC's minimum is 128x128")


@pytest.mark.gpu
def test_gpu_from_adapter_on_cuda_bf16(gpu_root):
    stub = SimpleNamespace(num_frames=8, image_size=GPU_SIDE, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                           device=torch.device("cuda", 0), dtype=torch.bfloat16)
    loader = DaliClipLoader.from_adapter(stub, _records(["h22.mp4"], 1), batch_size=2,
                                         manifest=M.build_manifest(["h22.mp4"], gpu_root))
    (batch,) = list(loader)
    assert batch.pixels.dtype == torch.bfloat16 and batch.pixels.device == torch.device("cuda", 0)
    assert _indices(batch.pixels[0]) == list(V.frame_indices(22, 8))
