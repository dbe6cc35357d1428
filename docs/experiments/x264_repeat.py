"""Does libx264 give the same bytes for the same frames? (docs/reproducibility.md; issue 16.)
Encodes one synthetic clip (scene 9 of seed 0, 32 frames of 64x64) 40 times in one process
through `isrt.engine.synthetic.write_video` (bitexact flags, one encoder thread), groups the files
by hash, and for two different outputs says which frames decode differently and how far each is
from the input.

    python docs/experiments/x264_repeat.py
"""
import hashlib, tempfile, os
import numpy as np, av
from isrt.engine import synthetic as S
scene = S.make_scene(0, 9, 64, 64)
frames = S.render_frames(scene, 32, 64, 64)
d = tempfile.mkdtemp(); by = {}
for i in range(40):
    p = S.write_video(os.path.join(d, f"v{i}.mp4"), frames, fps=8, container="mp4")
    by.setdefault(hashlib.md5(open(p, "rb").read()).hexdigest()[:8], str(p))
def dec(p):
    with av.open(p) as c: return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
ps = list(by.values()); print(len(ps), "distinct")
if len(ps) > 1:
    a, b = dec(ps[0]), dec(ps[1])
    diff = [k for k in range(32) if (a[k] != b[k]).any()]
    print("frames differing:", diff[:10], "sizes", [os.path.getsize(p) for p in ps])
    # which differs from the input more
    for p in ps: print(p[-8:], np.abs(dec(p).astype(int) - frames.astype(int)).mean())
