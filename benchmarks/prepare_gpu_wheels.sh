#!/usr/bin/env bash
# Run HERE, on the development machine (PyPI reachable), before a session's device calls.
#
# The GPU machine (Python 3.12, torch 2.11+cu130, driver 580 = CUDA 13.0; no network) lacks DALI,
# decord, PyAV and DALI's own dependencies. Everything it needs for benchmarks/gpu_check.sh's
# video section travels as ONE archive, in parts small enough for the device tool's 64 MiB
# per-call limit, one folder per consecutive call:
#
#   .gpu_wheels/     the downloaded cp312 manylinux x86_64 wheels (kept: a rerun reuses them)
#   .gpu_build/      site/ (the wheels unpacked by pip --target for cp312, no .pyc) and
#                    isrt-gpu-site.tar.xz (that tree, xz -9: ~207 MiB against ~330 MB of wheels)
#   .gpu_parts/pK/   isrt-gpu-site.tar.xz.partK + isrt-gpu-site.sha256 (the archive's and every
#                    part's sha256) + isrt-gpu-site.parts (the number of parts)
#   .gpu_parts/clips/  the GPU benchmark's 720p H.264 clips, made here (~90 KB each) so the
#                    device does not spend time encoding them
#
# On the device gpu_check.sh joins the parts (from /tmp/gpu_parts and .gpu_parts/p*), checks the
# sha256, and unpacks the tree to /tmp/site (no pip run there). The folders are git-ignored
# through .git/info/exclude (added here), so they travel only when a call names them in `carry`.
#
# Wheels (cp312): nvidia-dali-cuda130 (requirements-cpu.txt's pin; cuda130 because the device's
# driver 580 is CUDA 13.0 and its torch is cu130) with its dependencies missing there
# (nvimgcodec / nvjpeg / nvjpeg2k / nvtiff / nvcomp, astunparse, gast, libcst, makefun, nvtx,
# optree; numpy, packaging, six, pyyaml and typing-extensions are there), decord2 and av
# (requirements-cpu.txt's pins), liger-kernel and omegaconf (the kernel section's extras).
# The tree drops DALI's C++ headers and its extension modules for Pythons other than 3.12.
#
#   bash benchmarks/prepare_gpu_wheels.sh           # idempotent: reuses what is already built
#   FORCE=1 bash benchmarks/prepare_gpu_wheels.sh   # rebuild the archive and parts
# QUACK=1 adds QuACK (quack-kernels 0.6.5 with nvidia-cutlass-dsl 4.8.1 for CUDA 13 and its
# dependencies) for bench_kernels.py's anchor row: ~100 MB more wheels, so more parts and calls.
# Knobs: PART_MIB (default: what fits beside the working tree, at most 58), XZ_LEVEL (9),
# XZ_THREADS (0 = all cores), PY (python3 with pip), CLIPS=0 (no pre-made clips).
# Takes ~1 min to download from a warm mirror and 5-8 min of xz on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-python3}
WHEELS=.gpu_wheels
BUILD=.gpu_build
PARTS=.gpu_parts
NAME=isrt-gpu-site
ARCHIVE=$BUILD/$NAME.tar.xz
LIMIT_MIB=64
die() { echo "prepare_gpu_wheels: $*" >&2; exit 1; }

# 1. git-ignore the folders (a fresh clone's .git/info/exclude is empty) and prove it.
mkdir -p .git/info
touch .git/info/exclude
for d in "$WHEELS" "$BUILD" "$PARTS"; do
  grep -qxF "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude
done
for d in "$WHEELS" "$BUILD" "$PARTS"; do
  git check-ignore -q "$d/x" || die "$d is not git-ignored"
done

# 2. Download (pip skips files already there).
pin() {  # the version requirements-cpu.txt pins for package $1
  local v
  v=$(grep -iE "^$1==" requirements-cpu.txt | head -1 | cut -d= -f3)
  [ -n "$v" ] || die "no pin for $1 in requirements-cpu.txt"
  echo "$1==$v"
}
PKGS=(
  "$(pin nvidia-dali-cuda130)" "$(pin decord2)" "$(pin av)"
  # DALI 2.4.0's requirements, at the versions that installed and ran together in .venv
  nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-libnvcomp-cu13==5.3.0.16 nvidia-nvjpeg==13.3.2.43
  nvidia-nvjpeg2k-cu13==0.11.0.51 nvidia-nvtiff-cu13==0.8.0.82
  astunparse==1.6.3 gast==0.7.0 libcst==1.9.0 makefun==1.16.0 nvtx==0.2.17 optree==0.20.0
  # kernel section extras (what .whl/ used to carry)
  liger-kernel==0.8.5 omegaconf==2.4.0
)
if [ "${QUACK:-0}" = 1 ]; then  # bench_kernels.py's QuACK anchor row (CuTe DSL; ~100 MB more wheels)
  PKGS+=(quack-kernels==0.6.5 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
         nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 einops==0.8.2)
fi
PLAT=()
for p in manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  PLAT+=(--platform "$p")
done
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}")
mkdir -p "$WHEELS"
echo "== downloading ${#PKGS[@]} cp312 wheels into $WHEELS/"
{ "$PY" -m pip download -q --disable-pip-version-check --no-deps "${TARGET[@]}" -d "$WHEELS" "${PKGS[@]}" 2>&1 \
  || echo "PIP_FAILED"; } | { grep -v "is ignored: it is neither a file nor a directory" || true; } > "$WHEELS/.pip.log"
cat "$WHEELS/.pip.log"
grep -q PIP_FAILED "$WHEELS/.pip.log" && die "pip download failed"
# exactly one file per package (two versions would both be unpacked)
for spec in "${PKGS[@]}"; do
  stem=$(echo "${spec%%==*}" | tr '-' '_' | tr 'A-Z' 'a-z')
  ver=${spec##*==}
  n=$(ls "$WHEELS" | tr 'A-Z' 'a-z' | grep -c "^${stem}-" || true)
  [ "$n" = 1 ] || die "$n wheels for $spec in $WHEELS (want 1): remove the stale ones"
  ls "$WHEELS" | tr 'A-Z' 'a-z' | grep -q "^${stem}-${ver}-" || die "$WHEELS has no $spec"
done
ls -l "$WHEELS" | awk 'NR>1 {printf "   %6.1f MB  %s\n", $5/1e6, $9}'

# 3. Site tree + archive, unless the wheels are unchanged since the last build.
DIGEST=$(cd "$WHEELS" && ls -l --time-style=+%s *.whl | awk '{print $5, $7}' | sha256sum | cut -c1-16)
if [ "${FORCE:-0}" != 1 ] && [ -f "$ARCHIVE" ] && [ "$(cat "$BUILD/wheels.digest" 2>/dev/null)" = "$DIGEST" ]; then
  echo "== reusing $ARCHIVE (wheels unchanged; FORCE=1 rebuilds)"
else
  echo "== unpacking into $BUILD/site (pip --target, cp312, no .pyc)"
  rm -rf "$BUILD/site" "$ARCHIVE" "$BUILD/wheels.digest"
  mkdir -p "$BUILD"
  PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-index \
    --no-compile "${TARGET[@]}" --target "$BUILD/site" "$WHEELS"/*.whl
  # trims that cannot matter on the device: other Pythons' extension modules, C++ headers, caches
  find "$BUILD/site/nvidia/dali" -maxdepth 1 -name '*.cpython-*.so' ! -name '*cpython-312-*' -delete
  rm -rf "$BUILD/site/nvidia/dali/include"
  find "$BUILD/site" -name __pycache__ -type d -prune -exec rm -rf {} +
  [ -f "$BUILD/site/nvidia/dali/backend_impl.cpython-312-x86_64-linux-gnu.so" ] || die "no cp312 DALI backend"
  # nvidia/ must stay a pkgutil namespace (the device's torch has its own nvidia/* packages)
  grep -q extend_path "$BUILD/site/nvidia/__init__.py" || die "nvidia/__init__.py is not a pkgutil namespace"
  echo "   $(du -sm "$BUILD/site" | cut -f1) MiB unpacked; compressing (xz -${XZ_LEVEL:-9}, a few minutes)"
  t0=$(date +%s)
  # (nothing may import from $BUILD/site while this runs: a new __pycache__ fails tar)
  tar -C "$BUILD/site" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - . \
    | nice xz "-${XZ_LEVEL:-9}" "-T${XZ_THREADS:-0}" > "$ARCHIVE.tmp"
  mv "$ARCHIVE.tmp" "$ARCHIVE"
  echo "$DIGEST" > "$BUILD/wheels.digest"
  echo "   compressed in $(( $(date +%s) - t0 )) s"
fi
SHA=$(sha256sum "$ARCHIVE" | cut -d' ' -f1)
SIZE=$(stat -c %s "$ARCHIVE")

# 4. Split into one folder per call; a part plus the working tree must stay under 64 MiB.
TREE=$(git ls-files -z --cached --others --exclude-standard | "$PY" -c '
import os, sys
names = [n for n in sys.stdin.buffer.read().split(b"\0") if n]
print(sum(os.path.getsize(n) for n in names if os.path.isfile(n)))')
[ -d shared ] && TREE=$(( TREE + $(du -sb shared | cut -f1) ))
CLIPS_DIR=$PARTS/clips
rm -rf "$PARTS"/p*
mkdir -p "$PARTS"
if [ "${CLIPS:-1}" = 1 ]; then
  if [ -x .venv/bin/python ]; then
    echo "== GPU benchmark clips into $CLIPS_DIR (720p H.264 10 s, 8 files)"
    .venv/bin/python -c "
import sys; sys.path.insert(0, 'benchmarks')
import bench_video as b
from pathlib import Path
d = Path('$CLIPS_DIR'); d.mkdir(parents=True, exist_ok=True)
b.prepare_clips(d, '720p', 10, 8, 'h264', 2)"
  else
    echo "== no .venv: the device will write the benchmark clips itself (~10 s)"
  fi
fi
CLIPS_B=$(du -sb "$CLIPS_DIR" 2>/dev/null | cut -f1 || echo 0)
CLIPS_B=${CLIPS_B:-0}
MAX_MIB=$(( LIMIT_MIB - 3 - (TREE + CLIPS_B + 1048575) / 1048576 ))
PART_MIB=${PART_MIB:-$(( MAX_MIB < 58 ? MAX_MIB : 58 ))}
[ "$PART_MIB" -ge 8 ] || die "working tree too large ($TREE bytes) to leave room for a part"
echo "== splitting $(( SIZE / 1048576 )) MiB into parts of $PART_MIB MiB (working tree $(( TREE / 1024 )) KiB, clips $(( CLIPS_B / 1024 )) KiB)"
split -b "${PART_MIB}M" -d -a 2 "$ARCHIVE" "$BUILD/$NAME.tar.xz.part"
N=0
for f in "$BUILD/$NAME.tar.xz.part"*; do
  N=$((N + 1))
  mkdir -p "$PARTS/p$N"
  mv "$f" "$PARTS/p$N/$NAME.tar.xz.part$N"
done
{
  echo "$SHA  $NAME.tar.xz"
  for k in $(seq 1 $N); do
    echo "$(sha256sum "$PARTS/p$k/$NAME.tar.xz.part$k" | cut -d' ' -f1)  $NAME.tar.xz.part$k"
  done
} > "$BUILD/$NAME.sha256"
for k in $(seq 1 $N); do
  cp "$BUILD/$NAME.sha256" "$PARTS/p$k/"
  echo "$N" > "$PARTS/p$k/$NAME.parts"
done

# 5. Check: the joined parts are the archive, every call fits.
JOINED=$(for k in $(seq 1 $N); do cat "$PARTS/p$k/$NAME.tar.xz.part$k"; done | sha256sum | cut -d' ' -f1)
[ "$JOINED" = "$SHA" ] || die "joined parts sha256 $JOINED != archive $SHA"
echo "   joined parts sha256 = archive sha256 = $SHA"
for k in $(seq 1 $N); do
  b=$(du -sb "$PARTS/p$k" | cut -f1)
  extra=0; [ "$k" = "$N" ] && extra=$CLIPS_B
  total=$(( b + TREE + extra ))
  awk -v p="$PARTS/p$k" -v b="$b" -v t="$total" -v c="$([ "$extra" != 0 ] && echo ' + clips')" -v l="$LIMIT_MIB" \
    'BEGIN { printf "   %-16s %6.1f MiB + tree%s = %6.1f MiB of %d\n", p, b / 1048576, c, t / 1048576, l }' 
  [ "$total" -lt $(( LIMIT_MIB * 1048576 )) ] || die "call $k would carry $total bytes"
done
git status --porcelain --ignored=no | grep -q "$PARTS" && die "$PARTS shows in git status"

# 6. The device calls, for the session that has a GPU machine.
CLIPS_CARRY=""
[ -d "$CLIPS_DIR" ] && CLIPS_CARRY=", \"$CLIPS_DIR\""
cat << EOF

== device call sequence ($N calls, back to back: the machine is given back after ~30 s idle, and
   with it the parts already sent. Check 'warm: true' in every reply after the first; if one
   says false, the earlier parts are gone: start again at call 1.)
EOF
for k in $(seq 1 $N); do
  if [ "$k" -lt "$N" ]; then
    extra=""
    [ "$k" = 1 ] && extra=" && SECTIONS=probe bash benchmarks/gpu_check.sh"
    echo "  call $k: run(carry=[\"$PARTS/p$k\"], timeout_s=120,"
    echo "              command=\"mkdir -p /tmp/gpu_parts && cp -f $PARTS/p$k/* /tmp/gpu_parts/ && ls -l /tmp/gpu_parts$extra\")"
  else
    echo "  call $k: run(carry=[\"$PARTS/p$k\"$CLIPS_CARRY], timeout_s=600,"
    echo "              command=\"mkdir -p /tmp/gpu_parts && cp -f $PARTS/p$k/* /tmp/gpu_parts/ && SECTIONS=video bash benchmarks/gpu_check.sh\")"
  fi
done
cat << EOF
  (SECTIONS=video,kernels in the last call adds the kernel tests and benchmark, ~6 more minutes;
   a later call on the same warm machine can run SECTIONS=kernels alone: /tmp/site stays.)
  Then give_back, unless the next call follows at once. Results come back under \$OUT:
  gpu-video-<stamp>.csv, gpu_tests_video.log, gpu_bench_video.log, gpu_check_summary.txt
  (+ gpu-<stamp>.csv, gpu_tests_kernels.log, gpu_tests_other.log, bench.log with kernels).
  Copy the CSV into benchmarks/results/ here and commit it.
EOF
