"""read_frames: exact frame indices for every container and backend, and one error type for bad input.

Fixtures are synthetic clips whose pixels encode their frame index (isrt.engine.synthetic), so
every test reads back WHICH frame a decoder returned, not just how many.
"""
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from isrt.engine import synthetic as syn
from isrt.engine import video as V
from isrt.engine.video import VideoDecodeError, count_frames, frame_indices, probe, read_frames, read_frames_at
from isrt.engine.video import dali as D
from isrt.engine.video import pyav as PA
from isrt.engine.video import read as R
from isrt.engine.video import torchcodec as TC
from isrt.engine.video.common import Deadline

N = 40  # frames per fixture clip: 3 keyframes at g=16, so the seek path is exercised
FILE_CONTAINERS = ["mp4", "webm", "gif", "avi", "mkv"]
CONTAINERS = FILE_CONTAINERS + ["frames"]
BACKENDS = [b for b in V.available_backends()]


def _indices(frames):
    return [syn.decode_frame_index(f) for f in frames]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """container -> path of a 40-frame 64x64 index-pattern clip."""
    root = tmp_path_factory.mktemp("clips")
    frames = syn.render_frames(syn.make_scene(0, 0, 64, 64, True), N, 64, 64, index_pattern=True)
    out = {}
    for c in CONTAINERS:
        name = "clip" if c == "frames" else f"clip.{c}"
        out[c] = syn.write_video(root / c / name, frames, fps=8, container=c)
    return out


def test_frame_indices_formula():
    np.testing.assert_array_equal(frame_indices(40, 8), np.linspace(0, 39, 8, dtype=int))
    np.testing.assert_array_equal(frame_indices(3, 7), [0, 0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(frame_indices(10, 1), [0])
    with pytest.raises(ValueError):
        frame_indices(0, 4)


def _dali_cannot(container):
    """DALI reads no GIF; its CPU decoder reads VP8/VP9/MJPEG only (H.264 needs NVDEC). On a GPU
    machine the 64x64 VP9 fixture is below NVDEC's minimum and goes to DALI's CPU decoder."""
    return container == "gif" or (not torch.cuda.is_available() and container in ("mp4", "mkv"))


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("F", [1, 8, 16, N + 13])
def test_exact_indices(clips, container, backend, F):
    if backend == "dali" and _dali_cannot(container):
        with pytest.raises(VideoDecodeError, match="dali \\((cpu|mixed)\\) cannot decode codec"):
            read_frames(clips[container], F, backend=backend)
        return
    frames = read_frames(clips[container], F, backend=backend)
    assert frames.dtype == np.uint8 and frames.shape == (F, 64, 64, 3)
    assert frames.flags.c_contiguous
    assert _indices(frames) == list(np.linspace(0, N - 1, F, dtype=int))


@pytest.mark.parametrize("container", CONTAINERS)
def test_probe_and_count(clips, container):
    info = probe(clips[container])
    assert count_frames(clips[container]) == info.num_frames == N
    assert (info.width, info.height) == (64, 64)
    codec = {"mp4": "h264", "mkv": "h264", "webm": "vp9", "avi": "mjpeg", "gif": "gif",
             "frames": "images"}[container]
    assert info.codec == codec
    if container in ("mp4", "mkv", "webm", "avi"):
        assert info.fps == pytest.approx(8.0)
        assert info.duration_s == pytest.approx(N / 8)


@pytest.mark.parametrize("container", CONTAINERS)
def test_explicit_indices_any_order_with_repeats(clips, container):
    idx = [39, 0, 17, 17, 5, 38, 16, 15, 33, 1]
    assert _indices(read_frames_at(clips[container], idx)) == idx
    with pytest.raises(VideoDecodeError, match="out of range"):
        read_frames_at(clips[container], [0, N])


def test_nvdec_minimum_sizes_route_small_streams(clips, tmp_path, monkeypatch):
    """On a GPU machine (faked here: DALI is asked for its mixed decoder) a stream below NVDEC's
    minimum size goes to DALI's CPU decoder when that reads the codec (64x64 VP9, under VP9's
    128x128), and is refused with the reason otherwise (32x32 H.264 is fine: 48x16 is H.264's
    minimum; 32x8 is not)."""
    assert V.nvdec_can_decode("h264", 64, 64) and not V.nvdec_can_decode("mjpeg", 640, 480)
    assert not V.nvdec_can_decode("vp9", 64, 64) and V.nvdec_can_decode("vp9", 128, 128)
    assert not V.nvdec_can_decode("hevc", 128, 128) and not V.nvdec_can_decode("gif", 640, 480)
    assert not V.nvdec_can_decode("h264", 32, 8)
    monkeypatch.setattr(D, "_dali_device", lambda: "mixed")
    p = tmp_path / "x.mp4"
    assert D._dali_decoder_for(p, "vp9", 64, 64) == "cpu"
    assert D._dali_decoder_for(p, "mjpeg", 48, 80) == "cpu"
    assert D._dali_decoder_for(p, "mjpeg", 640, 480) == "cpu"  # DALI's GPU decoder reads no MJPEG
    assert D._dali_decoder_for(p, "vp9", 160, 160) == "mixed"
    assert D._dali_decoder_for(p, "h264", 64, 64) == "mixed"
    with pytest.raises(VideoDecodeError, match="NVDEC's minimum is 48x16"):
        D._dali_decoder_for(p, "h264", 32, 8)
    with pytest.raises(VideoDecodeError, match=r"dali \(mixed\) cannot decode codec gif"):
        D._dali_decoder_for(p, "gif", 64, 64)
    if "dali" in BACKENDS:  # the real CPU decoder behind the faked GPU machine
        frames = read_frames(clips["webm"], 8, backend="dali")
        assert _indices(frames) == list(np.linspace(0, N - 1, 8, dtype=int))


@pytest.fixture(scope="module")
def nvdec_clips(tmp_path_factory):
    """container -> 40-frame 160x160 clip: above NVDEC's minimum for every codec we write (VP9
    needs 128x128), so the mixed decoder itself reads each of them but MJPEG (the CPU one)."""
    root = tmp_path_factory.mktemp("nvdec")
    frames = syn.render_frames(syn.make_scene(0, 1, 160, 160, True), N, 160, 160, index_pattern=True)
    return {c: syn.write_video(root / f"clip.{c}", frames, fps=8, container=c)
            for c in ("mp4", "mkv", "webm", "avi")}


@pytest.mark.gpu
@pytest.mark.parametrize("container", ["mp4", "mkv", "webm", "avi"])
def test_dali_nvdec_exact_indices(nvdec_clips, container):
    """H.264 (B-frames) and VP9 through NVDEC, MJPEG through DALI's CPU decoder on the same GPU
    machine: exact indices, repeats included (F = N + 13). Runs only on a CUDA machine with DALI
    installed."""
    if "dali" not in BACKENDS:
        pytest.skip("nvidia-dali not installed")
    decoder = D._dali_decoder_for(nvdec_clips[container], probe(nvdec_clips[container]).codec, 160, 160)
    assert decoder == ("cpu" if container == "avi" else "mixed")
    for F in (1, 8, 16, N + 13):
        frames = read_frames(nvdec_clips[container], F, backend="dali")
        assert frames.shape == (F, 160, 160, 3) and frames.dtype == np.uint8
        assert _indices(frames) == list(np.linspace(0, N - 1, F, dtype=int))
    idx = [39, 0, 17, 17, 5, 38, 16, 15, 33, 1]
    assert _indices(read_frames_at(nvdec_clips[container], idx, backend="dali")) == idx


@pytest.mark.parametrize("container", ["mp4", "webm", "avi", "mkv"])
def test_seek_path_is_used_and_matches_sequential_decode(clips, container, monkeypatch):
    """Seekable containers never fall back to decoding from the start, and the seek path's
    pixels equal a full sequential decode's, frame for frame."""
    path = clips[container]
    targets = list(range(0, N, 3))
    seq = PA._decode_sequential(path, targets, N, Deadline(path, None))
    calls = []
    monkeypatch.setattr(PA, "_decode_sequential", lambda *a: calls.append(a) or {})
    frames = read_frames_at(path, targets, backend="pyav")
    assert calls == []
    for k, t in enumerate(targets):
        np.testing.assert_array_equal(frames[k], seq[t])


def test_frame_folder_natural_order_and_other_files_ignored(clips, tmp_path):
    src = sorted(clips["frames"].iterdir())
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):  # frame_2 must come before frame_10
        shutil.copy(src[i], folder / f"frame_{i}.jpg")
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".hidden.jpg").write_bytes(b"junk")
    assert count_frames(folder) == 12
    assert _indices(read_frames(folder, 12)) == list(range(12))
    assert V.list_frame_images(folder)[:3] == [folder / "frame_0.jpg", folder / "frame_1.jpg", folder / "frame_2.jpg"]


def test_wrong_num_frames_is_a_caller_error(clips):
    with pytest.raises(ValueError):
        read_frames(clips["mp4"], 0)


def test_manifest_frame_count_must_agree(clips):
    with pytest.raises(VideoDecodeError, match="manifest says 41"):
        read_frames(clips["mp4"], 4, frame_count=N + 1)
    assert _indices(read_frames(clips["mp4"], 4, frame_count=N)) == [0, 13, 26, 39]


# --- bad input: one error type, naming the file and the cause ---------------------------

def _cut(src, dst, frac):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def _faststart_mp4(path, frames):
    """An mp4 with its index (moov) before the data, so a cut file still opens."""
    import av
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        st = out.add_stream("libx264", rate=8)
        st.width, st.height, st.pix_fmt = 64, 64, "yuv420p"
        for i, a in enumerate(frames):
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts = i
            for p in st.encode(f):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


def _audio_only(path):
    import av
    with av.open(str(path), "w") as out:
        st = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate, fr.pts = 8000, 0
        for p in st.encode(fr):
            out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


def _webm_header_only(src, dst):
    """A valid header declaring a video stream, then one empty Cluster (timestamp only)."""
    data = src.read_bytes()
    cluster = bytes.fromhex("1F43B675" "83" "E7" "81" "00")  # ID, size 3, Timestamp = 0
    dst.write_bytes(data[: data.index(cluster[:4])] + cluster)
    return dst


def _w(path, data):
    """Write bytes or text to path; return the path."""
    (path.write_text if isinstance(data, str) else path.write_bytes)(data)
    return path


BAD_CASES = {
    "missing": (lambda c, d: d / "nope.mp4", "no such file"),
    "zero_byte": (lambda c, d: _w(d / "zero.mp4", b""), "zero-byte"),
    "text": (lambda c, d: _w(d / "t.mp4", "not a video\n" * 20), "Invalid data"),
    "audio_only": (lambda c, d: _audio_only(d / "a.wav"), "no video stream"),
    "mp4_cut_half": (lambda c, d: _cut(c["mp4"], d / "h.mp4", 0.5), "Invalid data"),
    "mp4_faststart_cut": (lambda c, d: _cut(_faststart_mp4(d / "fs.mp4", syn.render_frames(
        syn.make_scene(0, 0, 64, 64, True), N, 64, 64, True)), d / "fs_cut.mp4", 0.9), "truncated"),
    "webm_cut": (lambda c, d: _cut(c["webm"], d / "c.webm", 0.6), "truncated"),
    "mkv_cut": (lambda c, d: _cut(c["mkv"], d / "c.mkv", 0.9), "truncated"),
    "avi_cut": (lambda c, d: _cut(c["avi"], d / "c.avi", 0.5), "truncated"),
    "gif_cut": (lambda c, d: _cut(c["gif"], d / "c.gif", 0.9), "truncated"),
    "zero_frames": (lambda c, d: _webm_header_only(c["webm"], d / "z.webm"), "zero frames"),
    "unknown_codec": (lambda c, d: _w(d / "u.avi", c["avi"].read_bytes().replace(b"MJPG", b"QQQQ")),
                      "unsupported codec"),
    "empty_folder": (lambda c, d: (d / "empty").mkdir() or d / "empty", "zero frames"),
    "corrupt_jpeg_in_folder": (lambda c, d: (d / "bad").mkdir() or _w(d / "bad" / "00000.jpg", "x").parent,
                               "frame 00000.jpg"),
    "fifo": (lambda c, d: os.mkfifo(d / "f.mp4") or d / "f.mp4", "not a regular file"),
}


@pytest.mark.timeout(60)  # a reader that blocks (e.g. on the FIFO) fails here, never hangs the run
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_video_decode_error(clips, tmp_path, case, backend):
    make, cause = BAD_CASES[case]
    path = make(clips, tmp_path)
    with pytest.raises(VideoDecodeError) as ei:
        read_frames(path, 8, backend=backend)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(path) in msg and ei.value.path == str(path)
    if backend in ("auto", "pyav") or case in ("missing", "zero_byte", "fifo", "empty_folder"):
        assert cause in msg
    with pytest.raises(VideoDecodeError):  # probe (the manifest's view) finds it too
        probe(path)


def test_huge_resolution_refused_before_decoding(tmp_path):
    # one real 4160x4160 MJPEG frame: above the default limit of 4096*4096 pixels
    big = np.zeros((1, 4160, 4160, 3), np.uint8)
    path = syn.write_video(tmp_path / "big.avi", big, container="avi")
    with pytest.raises(VideoDecodeError, match=r"resolution 4160x4160 exceeds max_pixels"):
        read_frames(path, 1)
    with pytest.raises(VideoDecodeError, match="exceeds max_pixels=1000"):
        read_frames(tmp_path / "big.avi", 1, max_pixels=1000)


def test_unknown_and_missing_backend(clips, monkeypatch):
    with pytest.raises(VideoDecodeError, match="unknown backend 'nope'"):
        read_frames(clips["mp4"], 4, backend="nope")
    monkeypatch.setitem(R._BACKENDS, "decord", (lambda: False,) + R._BACKENDS["decord"][1:])
    with pytest.raises(VideoDecodeError, match="not installed"):
        read_frames(clips["mp4"], 4, backend="decord")


def test_timeout_is_a_video_decode_error(clips):
    with pytest.raises(VideoDecodeError, match="timed out"):
        read_frames(clips["mp4"], 4, timeout_s=0)


def test_library_exceptions_never_leak(clips, monkeypatch):
    def boom(*a):
        raise RuntimeError("decoder exploded\nsecond line")
    monkeypatch.setitem(R._BACKENDS, "pyav", R._BACKENDS["pyav"][:3] + (boom,))
    with pytest.raises(VideoDecodeError, match="decoder exploded second line") as ei:
        read_frames(clips["mp4"], 4, backend="pyav")
    assert "\n" not in str(ei.value)


def test_auto_falls_back_to_the_next_backend(clips, monkeypatch):
    def broken(path, *a):
        raise VideoDecodeError(path, "this backend cannot read it")
    monkeypatch.setattr(R, "AUTO_ORDER", ("broken", "pyav"))
    monkeypatch.setitem(R._BACKENDS, "broken", (lambda: True, True, False, broken))
    assert _indices(read_frames(clips["webm"], 3)) == [0, 19, 39]


def test_error_pickles_for_worker_processes():
    e = pickle.loads(pickle.dumps(VideoDecodeError("/x/a.mp4", "zero-byte file")))
    assert isinstance(e, VideoDecodeError) and str(e) == "video /x/a.mp4: zero-byte file"


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_memory_growth_over_1000_decodes(clips, backend):
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    path = clips["webm" if backend == "dali" else "mp4"]
    for _ in range(100):  # warm up: allocator pools, codec tables, lazy imports
        read_frames(path, 8, backend=backend)
    before = proc.memory_info().rss
    for k in range(1000):
        frames = read_frames(path, 8 if k % 2 else 16, backend=backend)
    growth_mb = (proc.memory_info().rss - before) / 2**20
    assert _indices(frames) == list(np.linspace(0, N - 1, 8, dtype=int))
    # 1000 leaked 8-frame clips would be 1000 * 98 KB = 96 MB; a leak of even a tenth shows
    assert growth_mb < 15, f"RSS grew {growth_mb:.1f} MB over 1000 decodes"


# --- torchcodec (optional: torchcodec==0.13.0 + the system's FFmpeg libraries) ---------------
# The backend-parametrized tests above include "torchcodec" whenever it imports; these add what
# is particular to it.

def _needs_torchcodec():
    if not TC.torchcodec_available():
        pytest.skip("torchcodec not importable: needs `pip install torchcodec==0.13.0` and the "
                    "system FFmpeg libraries (`apt-get install ffmpeg`)")


@pytest.mark.parametrize("container", FILE_CONTAINERS)
def test_torchcodec_frames_equal_pyav(clips, container):
    """Exact indices in any order with repeats, pixel-identical to PyAV (GIF included: its
    delta frames decode from the one keyframe FFmpeg flags)."""
    _needs_torchcodec()
    idx = [39, 0, 17, 17, 5, 38, 16, 15, 33, 1]
    frames = read_frames_at(clips[container], idx, backend="torchcodec")
    assert frames.dtype == np.uint8 and frames.shape == (len(idx), 64, 64, 3) and frames.flags.c_contiguous
    assert _indices(frames) == idx
    np.testing.assert_array_equal(frames, read_frames_at(clips[container], idx, backend="pyav"))
    with pytest.raises(VideoDecodeError, match="out of range"):
        read_frames_at(clips[container], [0, N], backend="torchcodec")


def test_torchcodec_count_must_agree_with_the_manifest(clips):
    _needs_torchcodec()
    with pytest.raises(VideoDecodeError, match="torchcodec counts 40 frames, PyAV/manifest 41"):
        read_frames(clips["mp4"], 4, backend="torchcodec", frame_count=N + 1)
    assert _indices(read_frames(clips["mp4"], 4, backend="torchcodec", frame_count=N)) == [0, 13, 26, 39]


def test_auto_reaches_torchcodec_when_the_others_fail(clips, monkeypatch):
    _needs_torchcodec()
    calls = []

    def broken(path, *a):
        calls.append(1)
        raise VideoDecodeError(path, "this backend cannot read it")
    for b in ("pyav", "decord"):
        monkeypatch.setitem(R._BACKENDS, b, (lambda: True, True, False, broken))
    assert _indices(read_frames(clips["mkv"], 3)) == [0, 19, 39]
    assert len(calls) == 2


def test_torchcodec_only_in_auto_when_it_imports(clips, monkeypatch):
    """Runs without torchcodec too: a failed import (no package, no FFmpeg) leaves it out."""
    import sys
    monkeypatch.setattr(TC, "_torchcodec_ok", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # makes the import fail
    assert not TC.torchcodec_available()
    assert "torchcodec" not in V.available_backends()
    with pytest.raises(VideoDecodeError, match="backend 'torchcodec' is not installed"):
        read_frames(clips["mp4"], 4, backend="torchcodec")
    assert _indices(read_frames(clips["mp4"], 3)) == [0, 19, 39]  # auto goes on without it
    monkeypatch.setattr(TC, "_torchcodec_ok", True)
    names = V.available_backends()
    assert "torchcodec" in names and names.index("torchcodec") > names.index("pyav")


# --- benchmarks/bench_video.py: the CLI, the CPU section and the GPU section's code -----------

def _bench_video():
    import importlib.util
    import sys
    from pathlib import Path
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_video.py"
    spec = importlib.util.spec_from_file_location("bench_video", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_video"] = mod  # importable by name, as when run as a script
    spec.loader.exec_module(mod)
    return mod


def test_bench_video_cpu_rows_and_gpu_section_skips_without_cuda(tmp_path, capsys):
    """A tiny CPU run writes checked rows; without CUDA the GPU section says why and writes none."""
    import csv
    bench = _bench_video()
    import bench_video_gpu  # beside bench_video.py, which puts its folder on sys.path
    assert bench.parse_args([]).section == "cpu"
    with pytest.raises(SystemExit):
        bench.parse_args(["--section", "gpu", "--gpu-pool-clips", "1"])
    gpu_here = bench_video_gpu.gpu_unavailable(False) is None  # CUDA + DALI: never run the real GPU section here
    rc = bench.main(["--section", "cpu" if gpu_here else "all", "--sizes", "224p", "--durations", "1",
                     "--frames", "4", "--backends", "pyav", "--repeats", "1", "--workers", "0", "--clips-per-config", "1",
                     "--clip-dir", str(tmp_path / "clips"), "--csv", str(tmp_path / "cpu.csv"),
                     "--gpu-csv", str(tmp_path / "gpu.csv")])
    out = capsys.readouterr().out
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "cpu.csv")))
    assert [(r["provider"], r["frames"]) for r in rows] == [("pyav", "4")]
    if not gpu_here:
        assert "GPU section skipped: " in out and not (tmp_path / "gpu.csv").exists()


@pytest.mark.skipif(not D.dali_available(), reason="nvidia-dali not installed")
def test_bench_video_gpu_section_code_on_the_cpu(tmp_path, capsys):
    """--gpu-on-cpu runs every GPU-section provider (DALI's CPU decoder, VP9 clips, 2 workers):
    rows ok, frames checked, the time budget skips what is left, the summary line is there."""
    import csv
    bench = _bench_video()
    args = ["--section", "gpu", "--gpu-on-cpu", "--gpu-size", "224p", "--gpu-seconds", "1",
            "--gpu-clips", "2", "--gpu-pool-clips", "4", "--gpu-repeats", "1", "--gpu-workers", "2",
            "--dali-batch", "2", "--dali-threads", "1", "--image-size", "64",
            "--clip-dir", str(tmp_path / "clips"), "--gpu-csv", str(tmp_path / "gpu.csv")]
    assert bench.main(args + ["--gpu-frames", "4"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "gpu.csv")))
    assert [r["provider"] for r in rows] == ["dali-loader", "decord+2w", "pyav+2w", "dali-decode", "dali"]
    assert all(r["status"] == "ok" for r in rows), rows
    assert all(r["check"] == "ok" for r in rows[1:]) and rows[0]["check"].startswith("vs dali frames")
    assert all("cpu (" in r["device"] and "dali=" in r["versions"] for r in rows)
    assert "F=4: dali-loader" in out and "vs decord+2w" in out
    assert bench.main(args + ["--gpu-frames", "8", "--gpu-providers", "pyav,dali", "--time-budget-s", "1e-9"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "gpu.csv")))[5:]
    assert [(r["provider"], r["status"]) for r in rows] == [("pyav+2w", "SKIPPED (time budget)"),
                                                            ("dali", "SKIPPED (time budget)")]
    capsys.readouterr()
    assert bench.main(args + ["--gpu-frames", "4", "--gpu-providers", "dali-loader,decord",
                              "--dali-threads", "1,2"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "gpu.csv")))[7:]
    assert [(r["provider"], r["threads"], r["status"]) for r in rows] == [
        ("dali-loader", "1", "ok"), ("dali-loader", "2", "ok"), ("decord+2w", "", "ok")]
    best = max(rows[:2], key=lambda r: float(r["clips_per_s"]))
    assert f"F=4: dali-loader ({best['threads']} threads)" in capsys.readouterr().out
