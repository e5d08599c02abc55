FROM python:3.11-slim
WORKDIR /app
ARG TORCH=torch==2.13.0
RUN pip install --no-cache-dir "$TORCH"
COPY pyproject.toml README.md ./
COPY llmos_jobs llmos_jobs
COPY workers workers
COPY broker_config broker_config
COPY schemas schemas
RUN pip install --no-cache-dir .
ENV LLMOS_DATA_DIR=/data
CMD ["llmos", "--help"]
