# Gradient Service image. CPU torch by default; for CUDA pick a wheel index the torch version has, e.g.
#   docker build -t gradient-service .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t gradient-service:cuda .
#   docker run --rm -p 8000:8000 gradient-service        # any GRADIENT_* variable configures it
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- builder: compilers and pip live here only -------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# Wheels exist for every dependency on amd64/arm64; the compiler is the fallback for any sdist.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
# hadolint ignore=DL3013
RUN python -m venv /opt/venv && pip install --upgrade pip
WORKDIR /app
# 1. torch alone, from the chosen wheel index (so pip never pulls PyPI's CUDA build by accident).
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
# 2. The runtime dependencies from pyproject.toml only (not the test extra): source edits keep this layer.
#    torch>=2.4 is already satisfied by step 1, so pip leaves it alone.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# 3. The package itself. README.md is optional: the glob copies it only when present (pyproject.toml,
#    unchanged since step 2, guarantees the COPY has a source either way).
COPY pyproject.toml README.m[d] ./
COPY service ./service
RUN pip install --no-deps . && pip check

# ---- runtime: the venv, a non-root user, nothing else -------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    GRADIENT_HOST=0.0.0.0 GRADIENT_PORT=8000
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app
# Same BASE_IMAGE in both stages, so the venv's interpreter symlinks stay valid.
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
# Documentation only: with -e GRADIENT_PORT=9000 the server and the health check both move to 9000.
EXPOSE 8000
# Liveness on the port the app actually reads (exec form; python instead of curl, absent from slim).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GRADIENT_PORT', '8000') + '/healthz', timeout=4)"]
# Exec form: gradient-service is PID 1 and gets SIGTERM directly (uvicorn drains for up to 30 s).
CMD ["gradient-service"]
