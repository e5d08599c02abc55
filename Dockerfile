# syntax=docker/dockerfile:1
# One Dockerfile, two images (docs/deploy.md):
#   docker build --build-arg FLAVOUR=cpu -t llmos-jobs:cpu .   # the default
#   docker build --build-arg FLAVOUR=gpu -t llmos-jobs:gpu .   # CUDA, SGLang and NVML
# Both run as the unprivileged user llmos (uid 10001) with the data directory /data.
ARG FLAVOUR=cpu

# --- CPU: slim Python, the CPU build of torch (PyPI's default wheel bundles CUDA) ------
FROM python:3.11-slim-bookworm AS base-cpu
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH"
ENV LLMOS_IMAGE_EXTRAS=""

# --- GPU: CUDA with its compiler (SGLang's kernels compile some of themselves on first
# use, as SGLang's own image allows for); torch comes in with SGLang, at its pin -------
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04 AS base-gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip
ENV LLMOS_IMAGE_EXTRAS="[gpu]"

# --- The image: the project on the chosen base --------------------------------------
FROM base-${FLAVOUR} AS image
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLMOS_DATA_DIR=/data
WORKDIR /src
COPY pyproject.toml README.md ./
COPY llmos_jobs llmos_jobs
COPY workers workers
COPY broker_config broker_config
COPY schemas schemas
RUN pip install --no-cache-dir ".${LLMOS_IMAGE_EXTRAS}" \
    && cd / && rm -rf /src
# (The next RUN must not start in the directory just removed.)
WORKDIR /
# A fixed numeric uid: Kubernetes' runAsNonRoot can check it; /data is the volume
# every service mounts (models, Celery beat's schedule).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/llmos llmos \
    && mkdir -p /data/models /models \
    && chown -R 10001:10001 /data
WORKDIR /home/llmos
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000 5555
# The default command is the API, so the image's own check is the API's; compose and
# the Kubernetes manifests give workers, control and Flower checks of their own.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
    CMD ["llmos", "health", "api"]
CMD ["llmos", "api", "--host", "0.0.0.0", "--port", "8000"]
