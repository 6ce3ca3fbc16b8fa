# syntax=docker/dockerfile:1
# prompttune server image: the gRPC API with in-process workers, the embedded SmolLM2 model
# (llama.cpp) and MiniLM embeddings. Nothing is downloaded at run time.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU-only torch first, so sentence-transformers does not pull a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
# Portable llama.cpp build: no -march=native (AMX paths trap on some virtual CPUs).
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    pip install "llama-cpp-python[server]==0.3.36"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY client ./client
COPY search ./search
COPY server ./server
RUN pip install ".[server,local]"

FROM python:3.11-slim-bookworm AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 prompttune \
 && mkdir -p /data /app/examples \
 && chown prompttune /data
COPY --from=build /opt/venv /opt/venv
COPY examples /app/examples
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PROMPTTUNE_DB=sqlite:////data/prompttune.db \
    PROMPTTUNE_DEMO_TASK=/app/examples/sst2/task.yaml \
    GRPC_VERBOSITY=ERROR \
    TQDM_DISABLE=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    PROMPTTUNE_HEALTH_TARGET=127.0.0.1:50051
USER prompttune
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051
# The probe reads PROMPTTUNE_HEALTH_* from the environment: with `serve --tls-cert ...` set
# PROMPTTUNE_HEALTH_TLS_CA (and PROMPTTUNE_HEALTH_SERVER_NAME when the certificate does not
# name 127.0.0.1); with --tls-client-ca also PROMPTTUNE_HEALTH_TLS_CERT and _TLS_KEY.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "prompttune.server.healthcheck"]
# SIGTERM triggers a graceful shutdown (health NOT_SERVING, in-flight RPCs drained). Logs are
# JSON lines on stderr, one object per line.
ENTRYPOINT ["prompttune"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051"]
