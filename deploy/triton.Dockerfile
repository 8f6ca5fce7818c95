# Triton for adaudit: NVIDIA's tritonserver image, in two variants (docker build --target). The model
# repository is not in the image: the chart mounts it from a PVC or points Triton at s3:// / gs://.
#
#   native (the default: the last stage): `adaudit export --target triton-gpu` writes model.onnx and a
#     config.pbtxt for Triton's own onnxruntime backend with TensorRT (FP16, engine cache, profiles),
#     both already in NVIDIA's image. Nothing is added: no Python packages, no torch, no adaudit. The
#     TensorRT engines are cached under /trt-cache/<model> (`adaudit export --trt-cache`): mount a
#     writable volume there (an emptyDir rebuilds the engines once per pod start, a PVC keeps them).
#       docker build -f deploy/triton.Dockerfile -t adaudit-triton:24.10-py3 .
#
#   python-backend: `adaudit export --target triton-cpu` (KIND_CPU instances, the `gpu-off` overlay, or
#     --gpu for KIND_GPU running eager PyTorch) writes model.py (export/triton_model.py) for Triton's
#     python backend, which imports torch, transformers, tokenizers, safetensors, numpy, pillow,
#     onnxruntime (the default CPU engine) and the adaudit package: this stage installs them, several
#     GB. Its torch is a CUDA 12 build; a KIND_GPU instance whose torch sees no CUDA refuses to load.
#       docker build -f deploy/triton.Dockerfile --target python-backend -t adaudit-triton:24.10-py3-python .
#
# Versions: the image's Python is 3.10 (Ubuntu 22.04), so the packages are the newest releases for
# 3.10 that adaudit accepts (transformers 5.20.2 and onnxruntime 1.23.2 are the last for 3.10; the
# project's own environment, Python 3.11, runs 5.25.0 and 1.32.0). pip resolved the PyPI pins for
# Python 3.10 on manylinux x86_64; PyTorch's cu128 index could not be reached from where this was
# written, and neither image has been built (no docker, no GPU there).
ARG TRITON_VERSION=24.10

FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3 AS python-backend

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/adaudit
# torch from PyPI is a CUDA 13 build since 2.13 (drivers >= 580); PyTorch's cu128 index holds the
# CUDA 12.8 build, which runs on the drivers 24.10 itself needs
RUN pip install --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0 \
 && pip install transformers==5.20.2 tokenizers==0.23.3 safetensors==0.8.0 numpy==1.26.4 pillow==12.3.0 \
                onnxruntime==1.23.2
COPY pyproject.toml README.md ./
COPY adaudit adaudit
COPY core core
COPY models models
COPY data data
COPY training training
COPY compression compression
COPY export export
COPY service service
COPY decisions decisions
# adaudit declares Python 3.11 for its own environment; the model code runs on 3.10, hence
# --ignore-requires-python, and --no-deps: only the model's dependencies above, not the gateway's
RUN pip install --no-deps --ignore-requires-python .
# runs as triton-server (uid 1000), the image's own non-root user: the chart sets runAsUser 1000


FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3 AS native

# the mount point of the TensorRT engine cache, writable by triton-server (uid 1000)
RUN mkdir -p /trt-cache && chown 1000:1000 /trt-cache
# runs as triton-server (uid 1000), the image's own non-root user: the chart sets runAsUser 1000
