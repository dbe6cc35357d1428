"""Fixtures shared by the tests of isrt.engine.video's manifest and loaders."""
import pytest

from isrt.engine import synthetic as syn


@pytest.fixture()
def mixed_root(tmp_path):
    """A video root in the shape of real datasets: ActivityNet-style bare ids stored as mp4, mkv
    and webm, an MSVD-style avi, a TGIF-style gif, a ShareGPTVideo-style frame folder, and one
    zero-byte file. Frame counts differ per video so a mix-up would show."""
    root = tmp_path / "root"
    specs = [("v_a", "mp4", 20), ("v_b", "mkv", 21), ("v_c", "webm", 22), ("msvd/clip1", "avi", 23),
             ("tgif/t1", "gif", 24), ("frames/v_d", "frames", 25)]
    for k, (name, c, n) in enumerate(specs):
        frames = syn.render_frames(syn.make_scene(1, k, 64, 64, True), n, 64, 64, index_pattern=True)
        syn.write_video(root / (name if c == "frames" else f"{name}.{c}"), frames, container=c)
    (root / "broken.mp4").write_bytes(b"")
    videos = {"v_a": 20, "v_b": 21, "v_c": 22, "msvd/clip1.avi": 23, "tgif/t1.gif": 24, "frames/v_d": 25}
    return root, videos
