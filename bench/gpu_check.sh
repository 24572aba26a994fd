#!/usr/bin/env bash
# GPU check: throughput of the full-size network on the GPU, float32 and mixed precision.
# Installs nothing: it needs a Python with this project and a CUDA build of TensorFlow
# (`pip install -e ".[gpu]"`), and prints the table of bench/train_throughput.py.
#   bash bench/gpu_check.sh [PYTHON]     (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'PYCODE'
import sys
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("TensorFlow", tf.__version__, "GPUs:", gpus)
if not gpus:
    sys.exit("no GPU visible to TensorFlow: install the project with the [gpu] extra")
PYCODE
for precision in float32 mixed_float16; do
  echo "== precision $precision"
  "$PY" bench/train_throughput.py --layers 0 3 6 all --samples 2048 --precision "$precision" \
    --json "bench/results/gpu_${precision}.json"
done
