# One image for the api, worker and migrate services.
#
# PyPI's torch wheels for Linux bundle the CUDA runtime, so the default image runs on a GPU
# (with the NVIDIA container toolkit on the host) and on CPU. For a much smaller CPU-only image,
# point TORCH_INDEX_URL at PyTorch's CPU wheel index:
#   docker build --build-arg TORCH_INDEX_URL=<cpu wheel index> -t transferlab:cpu .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TRANSFERLAB_DATA_DIR=/data \
    HF_HOME=/data/hf-cache

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} . \
    && useradd --create-home --uid 1000 transferlab \
    && mkdir -p /data && chown transferlab /data

USER transferlab
EXPOSE 8000
CMD ["transferlab", "api", "--host", "0.0.0.0", "--port", "8000"]
