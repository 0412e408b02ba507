# Gradient Service image: multi-stage, CPU torch by default, a CUDA build by build argument.
#
#   docker build -t gradient-service .                                    # CPU torch, about 1.1 GB
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t gradient-service:cuda .
#   docker run --rm -p 8000:8000 -e GRADIENT_WORKERS=2 gradient-service   # GRADIENT_* variables configure it
#
# Build arguments:
#   BASE_IMAGE       the Python 3.11+ image every stage starts from (the same in both: the venv links to its
#                    interpreter). Default: the official slim image.
#   TORCH_SPEC       the torch requirement, installed first and alone (default torch==2.13.0).
#   TORCH_INDEX_URL  the wheel index torch comes from: PyTorch's CPU index by default; a cuXYZ index that has
#                    TORCH_SPEC gives a CUDA build (the wheels carry the CUDA libraries: no CUDA base image is
#                    needed, only the NVIDIA container toolkit on the host). Empty: pip's own configuration
#                    decides (on PyPI, Linux x86_64 torch is a CUDA build).
#   PIP_EXTRA_ARGS   extra options for every pip install, e.g. "--find-links /wheels" or "--index-url URL".
#   BUILD_PACKAGES   Debian packages the builder installs before pip (default build-essential, for any
#                    dependency without a wheel); empty skips apt-get.
# A pip configuration (pip.conf, CA bundle, local wheels) can also be mounted into the RUN steps
# (`buildah bud --volume`, `podman build --volume`): scripts/container-smoke does that.
#
# Steps are ordered for the layer cache (and for few big layers, which copy-on-write-less storage such as
# buildah's vfs copies whole): torch and the dependencies change with pyproject.toml only; a source or
# README edit rebuilds the last two builder steps and the final COPY.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- source: what the package is built from, and nothing else ---------------------------------------------
FROM scratch AS source
# README.md is optional: the glob copies it only when present (pyproject.toml guarantees a source).
COPY pyproject.toml README.m[d] /src/
COPY service /src/service

# ---- builder: compilers, pip and its work live here only -------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG BUILD_PACKAGES="build-essential"
# hadolint ignore=DL3008
RUN if [ -n "${BUILD_PACKAGES}" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ${BUILD_PACKAGES} \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_EXTRA_ARGS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# 1. The venv; torch alone from the chosen index (so pip never pulls PyPI's CUDA build by accident); then the
#    runtime dependencies of pyproject.toml and its postgres extra (not the test extra), which find torch>=2.4
#    satisfied.
COPY pyproject.toml /tmp/pyproject.toml
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && pip install ${PIP_EXTRA_ARGS} ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} "${TORCH_SPEC}" \
    && python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['postgres'], sep=chr(10))" \
        > /tmp/requirements.txt \
    && pip install ${PIP_EXTRA_ARGS} -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/pyproject.toml
# 2. The package itself (no tests: they are not in the source stage). Then pip leaves the venv: the runtime
#    installs nothing.
COPY --from=source /src /src
RUN pip install ${PIP_EXTRA_ARGS} --no-deps /src \
    && python -m service.compute.optimisation.machine \
    && pip check \
    && gradient-service --help > /dev/null \
    && pip uninstall -y pip setuptools wheel

# ---- runtime: the base image, a non-root user and the venv; no compilers, pip, caches or tests -------------
FROM ${BASE_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    GRADIENT_HOST=0.0.0.0 GRADIENT_PORT=8000 GRADIENT_DATA_DIR=/data
# /data: the saved formulas' SQLite database (mount a volume there; a new named volume takes this owner).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
    && install --directory --owner 10001 --group 10001 /data
WORKDIR /home/app
# Documentation only: with -e GRADIENT_PORT=9000 the server and the health check both move to 9000.
EXPOSE 8000
STOPSIGNAL SIGTERM
# Liveness on the port the app reads (python: slim images have no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GRADIENT_PORT', '8000'), timeout=4)"]
# Exec form, no shell: gradient-service is PID 1 and gets SIGTERM itself: /readyz turns 503, in-flight
# requests get GRADIENT_SHUTDOWN_GRACE_S seconds, and it exits 0.
CMD ["gradient-service"]
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# Last, so that the metadata above never copies the 1 GB layer again. Root owns the code; the user runs it.
COPY --from=builder /opt/venv /opt/venv
