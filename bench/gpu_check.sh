#!/usr/bin/env bash
# GPU check, one prepared script of at most 8 minutes (`timeout` bounds each part):
#   1. installs the project with the `gpu` extra in .venv-gpu, unless a Python whose
#      TensorFlow sees a GPU is given (PYTHON=...) or already there; on a host without
#      PyPI, point QUANTA_WHEELHOUSE at a folder of wheels (`pip download -d DIR ".[gpu]"`);
#   2. the bare step and the real path (run_transfer with a worker's hooks) at batch 32,
#      layer 6, full width, in float32 and mixed_float16 (bench/train_throughput.py);
#   3. 1, 2, 4 and 8 workers sharing the GPU, in both precisions: aggregate runs per hour
#      and GPU memory per worker (bench/gpu_workers.py).
# Results: bench/results/gpu_*.json, and the tables on stdout.
#   bash bench/gpu_check.sh            (GPU_CHECK_WINDOW=15 seconds per worker count)
# Where TensorFlow cannot be installed but JAX sees the GPU (a lent machine without a
# package registry; TensorFlow's GPU wheels are about 2 GB), QUANTA_GPU_BACKEND=jax runs
# the same network's step through Keras's JAX backend instead (bench/gpu_jax.py: the
# GPU's rates, float32 and both mixed precisions, 1-8 workers sharing the GPU, the
# paper's protocol estimated), with PYTHON naming a Python that has JAX and Keras:
#   QUANTA_GPU_BACKEND=jax PYTHON=python3 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=bench/results
mkdir -p "$OUT"
left() { echo $(( 470 - ($(date +%s) - START) )); }   # seconds left of the 8 minutes

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || echo "nvidia-smi: not found"
nproc; lscpu | grep -m1 "Model name" || true

sees_gpu() { "$1" - <<'PY' 2>/dev/null
import sys, tensorflow as tf
sys.exit(0 if tf.config.list_physical_devices("GPU") else 1)
PY
}

if [ "${QUANTA_GPU_BACKEND:-tensorflow}" = jax ]; then
  PY=${PYTHON:-python3}
  echo "== Keras on JAX (bench/gpu_jax.py)"
  # shellcheck disable=SC2086  # GPU_JAX_ARGS: extra options, split on purpose
  PYTHONUNBUFFERED=1 timeout "$(left)" "$PY" bench/gpu_jax.py --budget $(( $(left) - 30 )) \
    --window "${GPU_CHECK_WINDOW:-15}" --json "$OUT/gpu_jax.json" ${GPU_JAX_ARGS:-} \
    || echo "the JAX part stopped: over its time or failed"
  echo "total: $(( $(date +%s) - START )) s"
  exit 0
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in .venv-gpu/bin/python .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null && sees_gpu "$candidate"; then PY=$candidate; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "== installing the gpu extra into .venv-gpu"
  python3 -m venv .venv-gpu
  FIND=()
  [ -n "${QUANTA_WHEELHOUSE:-}" ] && FIND=(--no-index --find-links "$QUANTA_WHEELHOUSE")
  timeout 240 .venv-gpu/bin/pip install -q "${FIND[@]}" -e ".[gpu]" || {
    echo "installing the gpu extra failed or took over 4 minutes"; exit 1; }
  PY=.venv-gpu/bin/python
  sees_gpu "$PY" || { echo "TensorFlow in .venv-gpu sees no GPU"; exit 1; }
fi
"$PY" -c "import tensorflow as tf; print('TensorFlow', tf.__version__, tf.config.list_physical_devices('GPU'))"
echo "install and checks: $(( $(date +%s) - START )) s"

for precision in float32 mixed_float16; do
  echo "== bare step and real path, $precision"
  timeout $(( $(left) > 90 ? 90 : $(left) )) "$PY" bench/train_throughput.py --seeded-only \
    --no-cached-source --layers 6 --real-layers 6 --no-real-source --ways worker \
    --samples 1024 --epochs 2 --precision "$precision" --json "$OUT/gpu_${precision}.json" \
    || echo "throughput ($precision) stopped: over its time or failed"
done

WINDOW=${GPU_CHECK_WINDOW:-15}
for precision in mixed_float16 float32; do
  budget=$(( $(left) - 5 ))
  [ "$budget" -lt 60 ] && { echo "no time left for the shared-GPU part ($precision)"; break; }
  echo "== workers sharing the GPU, $precision (${budget} s left)"
  timeout "$budget" "$PY" bench/gpu_workers.py --workers 1 2 4 8 --window "$WINDOW" \
    --precision "$precision" --json "$OUT/gpu_workers_${precision}.json" \
    || echo "shared-GPU part ($precision) stopped: over its time or failed"
done
echo "total: $(( $(date +%s) - START )) s"
