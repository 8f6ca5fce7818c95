#!/usr/bin/env bash
# NEVER RUN on the project's machines (none has a GPU): ready for when a GPU machine is lent. It
# refuses to start without an NVIDIA GPU, and no figure from it is in the docs until it has run.
#
# The student's Triton compute at batch 1 and 32 for `adaudit export --target triton-gpu`
# (benchmarks/gpu_serving.py): ONNX Runtime's TensorRT (FP16) and CUDA (float32) providers in
# process, TensorRT FP16's logits against PyTorch's, and the compute per execution inside the
# tritonserver bundled in nvidia-pytriton (python backend, KIND_GPU: it has no onnxruntime backend).
# Everything comes from PyPI: onnxruntime-gpu with its CUDA/cuDNN wheels and TensorRT's libraries go
# into their own virtual environment ($WORK/venv) that also sees the project's .venv (which keeps
# the CPU onnxruntime the tests use). The shape-only student of benchmarks/serving.sh is made first
# when missing (runs/shape/). Results: benchmarks/results/gpu-serving.{json,md}.
# Usage: benchmarks/gpu-serving.sh [gpu_serving.py arguments]     (ORT_GPU, TRT_LIBS: other pins)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! nvidia-smi -L > /dev/null 2>&1; then
  echo "error: no NVIDIA GPU here (nvidia-smi -L failed): benchmarks/gpu-serving.sh runs only on a GPU machine" >&2
  exit 1
fi
ADAUDIT=.venv/bin/adaudit
DATA=${DATA:-runs/shape/data}
SHAPE=${SHAPE:-runs/shape}
WORK=${WORK:-runs/gpu-serving}
VENV=$WORK/venv
# onnxruntime-gpu 1.23 is built for CUDA 12 and TensorRT 10; its extras bring CUDA's and cuDNN's wheels
ORT_GPU=${ORT_GPU:-onnxruntime-gpu[cuda,cudnn]==1.23.2}
TRT_LIBS=${TRT_LIBS:-tensorrt-cu12-libs==10.13.3.9}
mkdir -p "$SHAPE" "$WORK"

[ -f "$DATA/test.jsonl" ] || $ADAUDIT data make --out "$DATA" --n 600 --seed 0 --generator 1 > /dev/null
[ -f "$SHAPE/teacher/config.json" ] || $ADAUDIT teacher train --data "$DATA" --out "$SHAPE/teacher" --preset base --epochs 1
[ -f "$SHAPE/student/report.json" ] || $ADAUDIT compress --teacher "$SHAPE/teacher" --data "$DATA" \
  --out "$SHAPE/student" --recipe benchmarks/shape-recipe.yaml

if [ ! -x "$VENV/bin/python" ]; then
  BASE=$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')
  "$BASE/bin/python3" -m venv "$VENV"
  # the project's packages (and its editable install) after the venv's own: its onnxruntime-gpu wins
  PROJECT_SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  VENV_SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import site; site.addsitedir('$PROJECT_SITE')" > "$VENV_SITE/adaudit-project.pth"
  "$VENV/bin/pip" install "$ORT_GPU" "$TRT_LIBS"
fi
# TensorRT's libnvinfer for ONNX Runtime's TensorRT provider, here and in the python backend's stub
TRT_DIR=$("$VENV/bin/python" -c 'import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))')
export LD_LIBRARY_PATH="$TRT_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$VENV/bin/python" -c 'import onnxruntime; assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), onnxruntime.get_available_providers()'
"$VENV/bin/python" -m benchmarks.gpu_serving --student "$SHAPE/student" --work "$WORK" --out benchmarks/results "$@"
