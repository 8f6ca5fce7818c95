# The audit gateway image: `adaudit serve` (FastAPI + uvicorn, one worker: scale with replicas).
#   docker build -t adaudit-gateway:0.1.0 .
# The chart (helm/adaudit) runs it with `serve --host 0.0.0.0 --port 8080` and the ADAUDIT_*
# settings; Triton runs in its own pods (deploy/triton.Dockerfile).
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# the CPU build of torch first, so nothing pulls in a CUDA build (the gateway only preprocesses)
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
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
# every dependency of pyproject.toml pinned to the version the tests ran with (tests/test_dockerfiles.py
# checks that none is missing); psycopg: the PostgreSQL driver for database URLs postgresql+psycopg://
RUN pip install . "psycopg[binary]==3.3.9" \
        transformers==5.25.0 safetensors==0.8.0 numpy==1.26.4 pillow==13.0.0 scikit-image==0.26.0 \
        scikit-learn==1.9.1 pydantic==2.14.4 pyyaml==6.0.4 typer==0.29.2 rich==15.0.0 tqdm==4.70.1 \
        matplotlib==3.11.2 fastapi==0.165.0 "uvicorn[standard]==0.55.0" python-multipart==0.0.34 \
        pydantic-settings==2.16.3 sqlalchemy==2.1.9 alembic==1.20.1 prometheus-client==0.26.0 "tritonclient[grpc,http]==2.73.0" \
        httpx==0.29.0 nvidia-pytriton==0.7.0 onnx==1.23.2 onnxruntime==1.32.0 \
        pyahocorasick==2.3.1 opencc==1.4.2 jieba==0.42.1 fastapi-offline==1.7.7 pyarrow==18.1.0 snownlp==0.12.3 \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin adaudit \
 && mkdir -p /var/lib/adaudit && chown adaudit:adaudit /var/lib/adaudit

USER 10001:10001
WORKDIR /var/lib/adaudit
EXPOSE 8080
ENTRYPOINT ["adaudit"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
