# The audit gateway image: `adaudit serve` (FastAPI + uvicorn, one worker: scale with replicas).
#   docker build -t adaudit-gateway:0.1.0 .
# The chart (helm/adaudit) runs it with `serve --host 0.0.0.0 --port 8080` and the ADAUDIT_*
# settings; Triton runs in its own pods (deploy/triton.Dockerfile).
FROM python:3.11-slim

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
# psycopg: the PostgreSQL driver for database URLs postgresql+psycopg://
RUN pip install . "psycopg[binary]>=3.1" \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin adaudit \
 && mkdir -p /var/lib/adaudit && chown adaudit:adaudit /var/lib/adaudit

USER 10001:10001
WORKDIR /var/lib/adaudit
EXPOSE 8080
ENTRYPOINT ["adaudit"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
