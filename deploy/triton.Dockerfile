# Triton for adaudit: NVIDIA's tritonserver image plus what the python-backend model
# (export/triton_model.py, copied into the repository as model.py) imports: torch, transformers,
# safetensors and the adaudit package itself. The model repository is not in the image: the
# chart mounts it from a PVC or points Triton at s3:// / gs://.
#   docker build -f deploy/triton.Dockerfile -t adaudit-triton:24.10-py3 .
ARG TRITON_VERSION=24.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/adaudit
COPY pyproject.toml README.md ./
COPY adaudit adaudit
COPY core core
COPY models models
COPY data data
COPY training training
COPY compression compression
COPY export export
COPY service service
# torch from PyPI is the CUDA build on Linux. The image's python (3.10 in 24.xx) runs the
# python-backend stub; adaudit declares 3.11 for its own virtual environment, the model code
# runs on 3.10+, hence --ignore-requires-python with only the model's dependencies.
RUN pip install torch "transformers>=5.0,<6" "safetensors>=0.4" "numpy<2" "pillow>=10" \
 && pip install --no-deps --ignore-requires-python .

# runs as triton-server (uid 1000), the image's own non-root user: the chart sets runAsUser 1000
