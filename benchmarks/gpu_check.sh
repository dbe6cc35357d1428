#!/usr/bin/env bash
# GPU checks in one go, by section; run from anywhere:  bash benchmarks/gpu_check.sh
#
#   SECTIONS (comma list, run in the order given; default "kernels,video"):
#     probe    the device, driver, NVDEC library, torch; seconds, installs nothing
#     video    DALI/NVDEC: joins the parts made by benchmarks/prepare_gpu_wheels.sh (from
#              /tmp/gpu_parts and .gpu_parts/p*) into /tmp/site, runs the DALI tests of
#              tests/engine/video/ (the `gpu` ones included), then
#              the GPU section of benchmarks/bench_video.py (720p H.264: DALI vs decord / PyAV
#              with 16 worker processes) under a time budget; ~3-4 minutes on a warm H100
#     kernels  isrt.kernels: GPU tests, then the kernel benchmark at full sizes (~6 minutes)
#     engine-tests  the other gpu-marked tests (not video): ~20 s; also run by kernels
#     dali-scaling  benchmarks/dali_scaling.py on the 720p clips: clips/s of P DALI pipelines
#              decoding at once (threads, processes); SCALING_ARGS passes its options
#     train    benchmarks/bench_train.py: one DPO optimizer step of random 7B Qwen2.5-VL /
#              Video-LLaVA at 8/16/32 frames, full and LoRA, +- gradient checkpointing; each
#              case in its own process under T_TRAIN_CASE s, OOM recorded as "oom"; fsdp2 rows
#              need >= 2 GPUs (n/a on one); T_TRAIN total budget, TRAIN_CASES the --case list
#              (FAMILY:FRAMES:MODE:STRATEGY:CKPT:BATCH, space separated), TRAIN_ARGS extra options
#              (e.g. "--layouts duplicated,shared": dpo.shared_prefix against two rows per pair)
#     sampling benchmarks/bench_sampling.py: stage-1 sampling of random 7B Qwen2.5-VL / Video-LLaVA
#              (8 frames, 16 prompts x 2 samples, 128 new tokens), dynamic vs static KV cache
#              (the static one compiles its decode step in the warm-up); T_SAMPLING total budget,
#              SAMPLING_ARGS extra options
#
# Knobs (environment): T_TESTS / T_BENCH (kernel tests / benchmark seconds), OTHER_TESTS=0 (skip
# gpu tests outside tests/kernels in the kernel section), PYTEST_K (a -k filter for the kernel
# tests), T_BENCH=0 (skip the kernel benchmark), BENCH_ARGS (extra bench_kernels.py arguments), T_VIDEO_TESTS / T_VIDEO_BENCH (video
# tests / benchmark seconds; T_VIDEO_BENCH=0 skips the benchmark), VIDEO_BENCH_ARGS (extra bench_video.py arguments).
# Needs no network. Wheels in .whl/ (if any) are also installed to /tmp/site. CSV rows go to
# benchmarks/results/ and, when $OUT is set, are copied there with the logs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAMP=$(date +%Y%m%d-%H%M%S)
LOGDIR=${OUT:-/tmp}
SECTIONS=${SECTIONS:-kernels,video}
T_TESTS=${T_TESTS:-200}      # kernel GPU tests: ~150 s on a bare H200, mostly Triton compilation
T_BENCH=${T_BENCH:-150}      # seconds of kernel benchmark measurements (the rest is skipped, recorded)
T_VIDEO_TESTS=${T_VIDEO_TESTS:-240}
T_VIDEO_BENCH=${T_VIDEO_BENCH:-150}
T_TRAIN=${T_TRAIN:-420}      # seconds of training-step cases (the rest is skipped, recorded)
T_TRAIN_CASE=${T_TRAIN_CASE:-150}  # limit of one case: model build + warmup + timed steps
T_SAMPLING=${T_SAMPLING:-420}  # seconds of sampling cases (the rest is skipped, recorded)
# The one-GPU plan (FAMILY:FRAMES:MODE:STRATEGY:CKPT:PAIRS[:ACCUM]), in priority order (a budget
# cut drops the last): the issue-13 targets first (Qwen2.5-VL 8 frames: full with checkpointing,
# LoRA, full without checkpointing, full with 4 micro-batches a step), then 32 frames,
# Video-LLaVA (8 frames, its only setting; 2 pairs: 2,056 video tokens a sequence), 16 frames.
# Full fine-tuning keeps fp32 masters (16 bytes a parameter: ~114 GiB at 7.6B). FSDP2: 2 GPUs.
TRAIN_CASES=${TRAIN_CASES:-qwen2_5_vl:8:full:ddp:on:4 qwen2_5_vl:8:lora:ddp:off:4 qwen2_5_vl:8:full:ddp:off:4 qwen2_5_vl:8:full:ddp:on:4:4 qwen2_5_vl:32:full:ddp:on:4 video_llava:8:lora:ddp:off:2 video_llava:8:full:ddp:on:2 qwen2_5_vl:16:full:ddp:on:4}
PARTS_NAME=isrt-gpu-site
SITE=${GPU_SITE:-/tmp/site}     # where the parts are unpacked (first on PYTHONPATH)
SUMMARY=()
note() { SUMMARY+=("$1"); }
t_start=$(date +%s)

export PYTHONUNBUFFERED=1
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}

# ---------------------------------------------------------------------------------------------
# Setup shared by the sections.

probe() {
  echo "== device"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  echo "cpus: $(nproc)  python: $(python3 --version 2>&1)  free: /tmp $(df -h /tmp | awk 'NR==2 {print $4}'), /dev/shm $(df -h /dev/shm 2>/dev/null | awk 'NR==2 {print $4}')"
  local cuvid
  cuvid=$( (ldconfig -p 2>/dev/null | grep -o '/[^ ]*libnvcuvid\.so[.0-9]*'; \
            ls /usr/local/nvidia/lib64/libnvcuvid.so* /usr/lib/x86_64-linux-gnu/libnvcuvid.so* 2>/dev/null) \
          | sort -u | tr '\n' ' ')
  if [ -n "$cuvid" ]; then
    echo "NVDEC library: $cuvid"
  else
    echo "NVDEC library: libnvcuvid.so NOT FOUND: DALI's mixed decoder (NVDEC) cannot run here"
  fi
  python3 -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))"
  if [ -d /tmp/gpu_parts ]; then echo "parts in /tmp/gpu_parts: $(ls /tmp/gpu_parts | grep -c 'part[0-9]*$')"; fi
}

install_whl_dir() {  # .whl/*.whl (small extras, e.g. liger-kernel), as before
  if compgen -G ".whl/*.whl" > /dev/null; then
    echo "== installing carried wheels: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
    python3 -m pip install -q --no-index --no-deps --upgrade --target "$SITE" .whl/*.whl 2>&1 \
      | grep -v "WARNING: Target directory" || true
  fi
}

install_parts() {  # join + verify + unpack the prepare_gpu_wheels.sh archive into $SITE (once)
  local dir=/tmp/gpu_parts n sha k missing=""
  mkdir -p "$dir"
  for d in .gpu_parts/p*; do [ -d "$d" ] && cp -f "$d"/* "$dir"/ 2>/dev/null; done
  if [ ! -f "$dir/$PARTS_NAME.sha256" ]; then
    echo "no parts (.gpu_parts/p* or /tmp/gpu_parts): run benchmarks/prepare_gpu_wheels.sh and carry them"
    return 1
  fi
  sha=$(head -1 "$dir/$PARTS_NAME.sha256" | cut -d' ' -f1)
  if [ -f "$SITE/.$PARTS_NAME-$sha" ]; then
    echo "== $SITE already holds archive ${sha:0:12}"
    return 0
  fi
  n=$(cat "$dir/$PARTS_NAME.parts")
  for k in $(seq 1 "$n"); do [ -f "$dir/$PARTS_NAME.tar.xz.part$k" ] || missing="$missing $k"; done
  if [ -n "$missing" ]; then
    echo "MISSING parts:$missing of $n (the machine went cold between calls? resend them)"
    return 1
  fi
  local t0=$(date +%s)
  (cd "$dir" && sha256sum --quiet -c "$PARTS_NAME.sha256" --ignore-missing) || { echo "part checksum mismatch"; return 1; }
  for k in $(seq 1 "$n"); do cat "$dir/$PARTS_NAME.tar.xz.part$k"; done > /tmp/$PARTS_NAME.tar.xz
  echo "$sha  /tmp/$PARTS_NAME.tar.xz" | sha256sum --quiet -c || { echo "joined archive checksum mismatch"; return 1; }
  mkdir -p "$SITE"
  if command -v xz > /dev/null; then
    xz -dc -T0 /tmp/$PARTS_NAME.tar.xz | tar -x -C "$SITE" || return 1
  else
    python3 -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
      /tmp/$PARTS_NAME.tar.xz "$SITE" || return 1
  fi
  rm -f /tmp/$PARTS_NAME.tar.xz
  touch "$SITE/.$PARTS_NAME-$sha"
  echo "== joined $n parts (sha256 ok) and unpacked to $SITE in $(( $(date +%s) - t0 )) s ($(du -sm "$SITE" | cut -f1) MiB)"
}

isrt_namespace() {  # isrt without installing: setup.py's folder mapping rebuilt as links
  if ! python3 -P -c "import isrt.engine, isrt.kernels" 2> /dev/null; then
    local NS=/tmp/isrt_ns
    rm -rf "$NS" && mkdir -p "$NS/isrt"
    for f in "$ROOT"/isrt/*; do ln -s "$f" "$NS/isrt/"; done
    ln -s "$ROOT/engine" "$NS/isrt/engine"
    ln -s "$ROOT/kernels" "$NS/isrt/kernels"
    export PYTHONPATH=$NS:$PYTHONPATH
  fi
  python3 -P -c "import isrt.engine, isrt.kernels as k; print('isrt from', k.__file__.rsplit('/kernels', 1)[0])"
}

# ---------------------------------------------------------------------------------------------
# Sections.

section_video() {
  echo
  echo "######## video: DALI (NVDEC) tests and benchmark"
  if ! install_parts && ! python3 -c "import nvidia.dali" 2> /dev/null; then
    note "video: SKIPPED (no DALI: parts missing and nvidia.dali not importable)"
    return
  fi
  python3 -c "
import nvidia.dali, av, numpy
try:
    import decord; d = decord.__version__
except Exception as e:
    d = f'not importable ({e})'
print('dali', nvidia.dali.__version__, '| av', av.__version__, '| decord', d, '| numpy', numpy.__version__)" \
    || { note "video: FAILED (DALI/PyAV do not import)"; return; }

  echo "== video tests (DALI ones: gpu-marked NVDEC tests + DALI CPU tests; limit ${T_VIDEO_TESTS}s)"
  local t0=$(date +%s)
  timeout "$T_VIDEO_TESTS" python3 -P -m pytest -q -p no:cacheprovider -rfEs \
    tests/engine/video -k "(dali or nvdec) and not memory" 2>&1 \
    | tee "$LOGDIR/gpu_tests_video.log" | grep -v "^PASSED" | tail -40
  local rc=${PIPESTATUS[0]}
  local last
  last=$(grep -E "passed|failed|error" "$LOGDIR/gpu_tests_video.log" | tail -1)
  [ "$rc" = 124 ] && last="TIMED OUT after ${T_VIDEO_TESTS}s; $last"
  note "video tests: ${last:-no result} ($(( $(date +%s) - t0 )) s)"

  if [ "$T_VIDEO_BENCH" = 0 ]; then note "video benchmark: not run (T_VIDEO_BENCH=0)"; return; fi
  echo "== video benchmark (GPU section, budget ${T_VIDEO_BENCH}s)"
  mkdir -p benchmarks/results
  VCSV=benchmarks/results/gpu-video-$STAMP.csv
  local clips=()
  [ -d .gpu_parts/clips ] && clips=(--clip-dir .gpu_parts/clips)
  t0=$(date +%s)
  timeout $((T_VIDEO_BENCH + 180)) python3 -P benchmarks/bench_video.py --section gpu \
    --time-budget-s "$T_VIDEO_BENCH" --gpu-csv "$VCSV" "${clips[@]}" ${VIDEO_BENCH_ARGS:-} 2>&1 \
    | tee "$LOGDIR/gpu_bench_video.log" | tail -45
  [ "${PIPESTATUS[0]}" = 124 ] && note "video benchmark: TIMED OUT"
  if [ -f "$VCSV" ]; then
    [ -n "${OUT:-}" ] && cp "$VCSV" "$OUT/"
    note "video benchmark: $(grep -c ',ok,' "$VCSV") rows ok of $(( $(wc -l < "$VCSV") - 1 )) in $VCSV ($(( $(date +%s) - t0 )) s)"
    while IFS= read -r line; do note "  $line"; done < <(grep -E "^F=[0-9]+: dali-loader" "$LOGDIR/gpu_bench_video.log")
  else
    note "video benchmark: no CSV (see $LOGDIR/gpu_bench_video.log)"
  fi
}

section_dali_scaling() {  # after video (needs its DALI): aggregate clips/s of P pipelines at once
  echo
  echo "######## dali-scaling: P DALI pipelines in threads / processes"
  python3 -c "import nvidia.dali" 2> /dev/null || install_parts || { note "dali-scaling: SKIPPED (no DALI)"; return; }
  [ -d .gpu_parts/clips ] || { note "dali-scaling: SKIPPED (no .gpu_parts/clips: carry them)"; return; }
  timeout 240 python3 -P benchmarks/dali_scaling.py --clip-dir .gpu_parts/clips ${SCALING_ARGS:-} 2>&1 \
    | tee "$LOGDIR/gpu_dali_scaling.log"
  while IFS= read -r line; do note "  $line"; done < <(grep -E "^ +(threads|processes) " "$LOGDIR/gpu_dali_scaling.log")
}

section_engine_tests() {  # seconds: the gpu-marked tests outside tests/kernels and the video ones
  echo "== GPU tests: everything else marked gpu (the video ones run in the video section)"
  timeout 120 python3 -P -m pytest -q -m gpu tests --ignore=tests/kernels \
    --ignore=tests/engine/video -p no:cacheprovider 2>&1 \
    | tee "$LOGDIR/gpu_tests_other.log" | tail -15
  note "other gpu tests: $(grep -E "passed|failed|error|skipped" "$LOGDIR/gpu_tests_other.log" | tail -1)"
}

section_kernels() {
  echo
  echo "######## kernels: isrt.kernels GPU tests and benchmark"
  python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))"
  echo "== GPU tests: tests/kernels"
  timeout "$T_TESTS" python3 -P -m pytest -q -m gpu tests/kernels -p no:cacheprovider -rA \
    ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 \
    | tee "$LOGDIR/gpu_tests_kernels.log" | grep -v "^PASSED" | tail -60
  note "kernel tests: $(grep -E "passed|failed|error" "$LOGDIR/gpu_tests_kernels.log" | tail -1)"
  [ "${OTHER_TESTS:-1}" = "1" ] && section_engine_tests

  if [ "$T_BENCH" = 0 ]; then note "kernel benchmark: not run (T_BENCH=0)"; return; fi
  echo "== kernel benchmark (time budget ${T_BENCH}s; target shape first, then every V=32000 row)"
  mkdir -p benchmarks/results
  CSV=benchmarks/results/gpu-$STAMP.csv
  timeout $((T_BENCH + 150)) python3 -P benchmarks/bench_kernels.py --csv "$CSV" \
    --time-budget-s "$T_BENCH" --rep-ms 200 --profile ours ${BENCH_ARGS:-} 2>&1 \
    | tee "$LOGDIR/bench.log" | tail -80
  if [ -f "$CSV" ]; then
    [ -n "${OUT:-}" ] && cp "$CSV" "$OUT/"
    while IFS= read -r line; do note "  $line"; done < <(python3 - "$CSV" << 'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
ok = sum(r["status"] == "ok" for r in rows)
print(f"kernel benchmark: {ok} rows ok of {len(rows)} in {sys.argv[1]}")
for r in rows:
    if r["N"] != "16384" or r["head"] != "trainable":
        continue
    if r["status"] != "ok":
        print(f"V={r['V']:>6} T={r.get('T', ''):>5} {r['provider']:>16}: {r['status']}")
        continue
    print(f"V={r['V']:>6} T={r.get('T', ''):>5} {r['provider']:>16}: {float(r['median_ms']):8.2f} ms "
          f"{float(r['useful_tflops']):6.1f} useful TFLOP/s, extra {float(r['extra_mem_mib']):7.0f} MiB")
EOF
)
  else
    note "kernel benchmark: no CSV (see $LOGDIR/bench.log)"
  fi
}

section_train() {
  echo
  echo "######## train: one DPO optimizer step at the 7B shapes (random weights)"
  mkdir -p benchmarks/results
  local TCSV=benchmarks/results/train-gpu-$STAMP.csv t0=$(date +%s)
  local case_args=()
  for c in $TRAIN_CASES; do case_args+=(--case "$c"); done
  timeout $((T_TRAIN + T_TRAIN_CASE + 60)) python3 -P benchmarks/bench_train.py --csv "$TCSV" \
    --time-budget-s "$T_TRAIN" --case-limit-s "$T_TRAIN_CASE" "${case_args[@]}" ${TRAIN_ARGS:-} 2>&1 \
    | tee "$LOGDIR/bench_train.log" | tail -60
  [ "${PIPESTATUS[0]}" = 124 ] && note "train benchmark: TIMED OUT"
  if [ -f "$TCSV" ]; then
    [ -n "${OUT:-}" ] && cp "$TCSV" "$OUT/"
    while IFS= read -r line; do note "  $line"; done < <(python3 - "$TCSV" << 'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"train benchmark: {sum(r['status'] == 'ok' for r in rows)} rows ok of {len(rows)} in {sys.argv[1]}")
for r in rows:
    head = f"{r['family']:>11} F={r['frames']:>2} {r['mode']:>4} {r['provider']:>10} b{r['batch_pairs']}x{r['grad_accum']}"
    if r["status"] != "ok":
        print(f"{head}: {r['status'][:60]}")
        continue
    print(f"{head}: T={r['seq_len']:>5} {float(r['median_ms']):8.1f} ms {float(r['tokens_per_s_per_gpu']):8.0f} tok/s "
          f"MFU {100 * float(r['mfu']):5.1f} % HFU {100 * float(r['hfu']):5.1f} % peak {float(r['peak_mem_mib']) / 1024:6.1f} GiB ({r['attn']})")
EOF
)
    note "train benchmark: $(( $(date +%s) - t0 )) s"
  else
    note "train benchmark: no CSV (see $LOGDIR/bench_train.log)"
  fi
}

section_sampling() {
  echo
  echo "######## sampling: stage-1 generation at the 7B shapes (random weights), dynamic vs static cache"
  mkdir -p benchmarks/results
  local SCSV=benchmarks/results/sampling-gpu-$STAMP.csv t0=$(date +%s)
  timeout $((T_SAMPLING + 460)) python3 -P benchmarks/bench_sampling.py --csv "$SCSV" \
    --time-budget-s "$T_SAMPLING" ${SAMPLING_ARGS:-} 2>&1 | tee "$LOGDIR/bench_sampling.log" | tail -20
  [ "${PIPESTATUS[0]}" = 124 ] && note "sampling benchmark: TIMED OUT"
  if [ -f "$SCSV" ]; then
    [ -n "${OUT:-}" ] && cp "$SCSV" "$OUT/"
    note "sampling benchmark ($(( $(date +%s) - t0 )) s, $SCSV):"
    while IFS= read -r line; do note "  $line"; done < <(grep -E "ms/step|oom|ERR|SKIPPED|timeout" "$LOGDIR/bench_sampling.log")
  else
    note "sampling benchmark: no CSV (see $LOGDIR/bench_sampling.log)"
  fi
}

# ---------------------------------------------------------------------------------------------

probe
[ "$SECTIONS" = probe ] && exit 0
install_whl_dir
isrt_namespace || { echo "cannot import isrt"; exit 1; }
IFS=, read -ra SECS <<< "$SECTIONS"
for s in "${SECS[@]}"; do
  case "$s" in
    probe) ;;
    video) section_video ;;
    kernels) section_kernels ;;
    dali-scaling) section_dali_scaling ;;
    train) section_train ;;
    sampling) section_sampling ;;
    engine-tests) section_engine_tests ;;
    *) echo "unknown section '$s' (probe, video, kernels, engine-tests, dali-scaling, train, sampling)"; exit 2 ;;
  esac
done

echo
echo "######## summary ($SECTIONS, $(( $(date +%s) - t_start )) s)"
for line in "${SUMMARY[@]}"; do echo "$line"; done
if [ -n "${OUT:-}" ]; then printf '%s\n' "${SUMMARY[@]}" > "$OUT/gpu_check_summary.txt"; fi
