#!/usr/bin/env bash
# The GPU check of issue 13: one script, one device-tool call, JSON results in $OUT.
#
# On a fresh H200 machine (torch / torchvision preinstalled, no network; wheels carried in .whl/,
# see bench/gpu_wheels.sh) it runs, each step under its own timeout and going on when one fails:
#   0. env.json          GPU, driver, torch / CUDA versions, the carried wheels installed
#   1. model_speed.json  bench/model_speed.py at 1024 px batch 8: ours bf16 / fp32 / bf16 +
#                        compile + channels_last vs torchvision bf16 / fp32, train and infer
#   2. train_gpu.json    bench/train_gpu.py: 200 iterations of the training loop at 1024 px
#   3. latency.json      bench/model_speed.py --batch 1 --phases infer: ms/image, eager,
#                        compiled, compiled with CUDA graphs (mode="reduce-overhead")
#   gpu_check.json       each step's exit code and seconds; gpu_check.log everything printed
# The whole run fits in 8 minutes: the steps' timeouts add up to 450 s, plus at most 105 s for
# the wheel install and env.json, which take seconds.
#
#   bash bench/gpu_check.sh                                   # on the GPU machine (docs/gpu.md)
#   GPU_CHECK_DEVICE=cpu OUT=/tmp/out bash bench/gpu_check.sh # the same steps, tiny, on a CPU
#
# Environment: OUT (results folder; default ./gpu_check_out), GPU_CHECK_DEVICE (cuda | cpu),
# GPU_CHECK_COMMIT (recorded in the JSON; the GPU machine's copy of the tree has no .git),
# PYTHON (default python3), GPU_CHECK_STEPS (which steps, default "model_speed train latency").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT=${OUT:-$ROOT/gpu_check_out}
STEPS=${GPU_CHECK_STEPS:-model_speed train latency}
mkdir -p "$OUT"
export PYTHON OUT
export PYTHONUNBUFFERED=1
export GPU_CHECK_COMMIT=${GPU_CHECK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
LOG="$OUT/gpu_check.log"
: >"$LOG"
STATUS="$OUT/.steps.tsv"
: >"$STATUS"

if [ "$DEVICE" = cuda ]; then
  # The numbers of issue 13: 1024 px, batch 8; 200 training iterations; latency at batch 1.
  SPEED_ARGS=(--size 1024 --batch 8 --iters 10 --warmup 3 --compile-warmup 4
    --variants ours_bf16,tv_bf16,ours_fp32,tv_fp32,ours_bf16_compile_cl
    --trace "$OUT/trace_ours_bf16_train.json" --trace-variant ours_bf16)
  TRAIN_ARGS=(--size 1024 --batch 8 --iters 200 --num-images 32 --loader-workers 4)
  LATENCY_ARGS=(--size 1024 --batch 1 --phases infer --iters 20 --warmup 3 --compile-warmup 6
    --profile-steps 0 --variants ours_bf16,ours_fp32,tv_bf16,ours_bf16_compile_cl,ours_bf16_compile_ro)
  T_WHEELS=60 T_ENV=45 T_SPEED=215 T_TRAIN=100 T_LATENCY=135
else
  # Every code path of the GPU run at toy sizes (tests/bench/test_gpu_check.py runs this).
  LIGHT=(--size 128 --batch 1 --iters 1 --warmup 1 --compile-warmup 0 --arch resnet18 --light
    --stage-steps 1 --profile-steps 1 --compile-backend "${GPU_CHECK_COMPILE_BACKEND:-aot_eager}")
  SPEED_ARGS=("${LIGHT[@]}" --variants ours_bf16,tv_bf16,ours_bf16_compile_cl
    --trace "$OUT/trace_ours_bf16_train.json" --trace-variant ours_bf16)
  TRAIN_ARGS=(--size 128 --batch 2 --iters 3 --warmup 1 --log-every 1 --preset shapes_small
    --num-images 4)
  LATENCY_ARGS=("${LIGHT[@]}" --phases infer --profile-steps 0
    --variants ours_bf16,tv_bf16,ours_bf16_compile_ro)
  T_WHEELS=300 T_ENV=600 T_SPEED=1200 T_TRAIN=600 T_LATENCY=900  # a shared, slow CPU
fi

log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$LOG"; }

# step NAME SECONDS CMD...: run CMD under a timeout, log its output, record exit code and time.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS rc=0
  log "step $name (timeout ${limit}s): $*"
  if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash
    set -- bash -c "$1"
  fi
  timeout -k 15 "$limit" "$@" > >(tee -a "$LOG") 2>&1 || rc=$?
  sleep 0.2  # let tee drain
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STATUS"
  log "step $name: exit $rc after $((SECONDS - t0)) s"
}

wants() { [[ " $STEPS " == *" $1 "* ]]; }

# 0. Carried wheels (pycocotools): into /tmp/site, ahead of the image's packages.
install_wheels() {
  shopt -s nullglob
  local wheels=(.whl/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "no wheels in .whl/ (run bench/gpu_wheels.sh here and carry .whl)"
    return 0
  fi
  local site=${GPU_CHECK_SITE:-/tmp/site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --python-version 3.12 --implementation cp --only-binary=:all: \
    --target "$site" "${wheels[@]}"
  echo "installed ${wheels[*]} into $site"
}
export -f install_wheels
step wheels "$T_WHEELS" install_wheels
if "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  export PYTHONPATH=${GPU_CHECK_SITE:-/tmp/site}:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else  # a CPU dry run under another Python: the cp312 wheels were only test-installed
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi

env_json() {
  "$PYTHON" - "$OUT/env.json" <<'PY'
import json, os, platform, subprocess, sys
out = {"python": sys.version.split()[0], "platform": platform.platform(),
       "commit": os.environ.get("GPU_CHECK_COMMIT"), "device": os.environ.get("GPU_CHECK_DEVICE", "cuda")}
try:
    import torch, torchvision
    out |= {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cuda_available": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out |= {"gpu": p.name, "gpu_memory_gb": round(p.total_memory / 1e9, 1),
                "sm_count": p.multi_processor_count, "capability": f"{p.major}.{p.minor}"}
except Exception as e:
    out["torch_error"] = repr(e)
for mod in ("pycocotools", "numpy", "PIL", "yaml", "tqdm", "safetensors", "ray", "mlflow"):
    try:
        m = __import__(mod)
        out.setdefault("modules", {})[mod] = getattr(m, "__version__", "present")
    except Exception as e:
        out.setdefault("modules", {})[mod] = f"missing ({type(e).__name__})"
try:
    out["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit",
         "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as e:
    out["nvidia_smi"] = f"unavailable ({type(e).__name__})"
json.dump(out, open(sys.argv[1], "w"), indent=2)
print(json.dumps(out))
PY
}
export -f env_json
step env "$T_ENV" env_json

if wants model_speed; then
  step model_speed "$T_SPEED" "$PYTHON" bench/model_speed.py --device "$DEVICE" "${SPEED_ARGS[@]}" \
    --json "$OUT/model_speed.json"
  if [ -f "$OUT/trace_ours_bf16_train.json" ]; then
    gzip -f "$OUT/trace_ours_bf16_train.json" || log "gzip failed; the trace stays uncompressed"
  fi
fi
if wants train; then
  step train "$T_TRAIN" "$PYTHON" bench/train_gpu.py --device "$DEVICE" "${TRAIN_ARGS[@]}" \
    --json "$OUT/train_gpu.json"
fi
if wants latency; then
  step latency "$T_LATENCY" "$PYTHON" bench/model_speed.py --device "$DEVICE" "${LATENCY_ARGS[@]}" \
    --json "$OUT/latency.json"
fi

# Summary: gpu_check.json (steps + the headline numbers) and a short table at the end of the log.
"$PYTHON" - "$OUT" "$STATUS" <<'PY' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
out, status = Path(sys.argv[1]), Path(sys.argv[2])
steps = {}
for line in status.read_text().splitlines():
    name, rc, secs = line.split("\t")
    steps[name] = {"exit": int(rc), "seconds": int(secs), "timed_out": rc in ("124", "137")}
def load(name):
    try:
        return json.loads((out / name).read_text())
    except Exception:
        return None
summary = {"steps": steps, "headline": {}}
speed, train, lat = load("model_speed.json"), load("train_gpu.json"), load("latency.json")
if speed:
    for phase in ("train", "infer"):
        for k, v in speed.get("variants", {}).items():
            if phase in v:
                summary["headline"][f"{phase} img/s {k}"] = v[phase]["images_per_s"]
    summary["headline"]["ratios"] = speed.get("ratios")
if train:
    summary["headline"]["loop img/s"] = train.get("images_per_s")
    summary["headline"]["loop loss"] = [train.get("loss_first"), train.get("loss_last")]
    summary["headline"]["loop loss_fell"] = train.get("loss_fell")
if lat:
    for k, v in lat.get("variants", {}).items():
        summary["headline"][f"latency ms/img {k}"] = v.get("infer", {}).get("ms_per_image", v.get("error"))
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
print("\n=== gpu_check summary ===")
for name, s in steps.items():
    print(f"step {name:12s} exit {s['exit']:3d} {s['seconds']:4d} s" + ("  TIMED OUT" if s["timed_out"] else ""))
for k, v in summary["headline"].items():
    print(f"{k}: {v}")
PY
rm -f "$STATUS"
