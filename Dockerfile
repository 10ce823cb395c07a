# One image for the api, worker and migrate services.
#
# PyPI's torch wheels for Linux bundle the CUDA runtime, so the default image runs on a GPU
# (with the NVIDIA container toolkit on the host) and on CPU. For a much smaller CPU-only image,
# point TORCH_INDEX_URL at PyTorch's CPU wheel index:
#   docker build --build-arg TORCH_INDEX_URL=<cpu wheel index> -t transferlab:cpu .
# For reproducible builds pin the base image by digest: --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX_URL=
# The image is for deployment, so it starts in production mode: it refuses SQLite, the embedded
# broker, default database passwords and running without an API key. For a local try-out pass
# -e TRANSFERLAB_ENVIRONMENT=dev (and never publish that container's port beyond 127.0.0.1).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRANSFERLAB_ENVIRONMENT=production \
    TRANSFERLAB_DATA_DIR=/data \
    HF_HOME=/data/hf-cache

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
COPY transferlab ./transferlab
# Installed as root and left owned by root: the service user can run the code, not change it.
# --no-log-init: useradd would otherwise write a sparse lastlog entry sized by the uid.
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} . \
    && useradd --no-log-init --create-home --uid 1000 transferlab \
    && mkdir -p /data && chown transferlab:transferlab /data && chmod 750 /data

USER transferlab
EXPOSE 8000
CMD ["transferlab", "api", "--host", "0.0.0.0", "--port", "8000"]
