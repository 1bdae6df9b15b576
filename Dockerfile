# gridsweep: one image for the API, the workers and the one-shot migration.
#   CPU (default):  docker build -t gridsweep .
#   CUDA:           docker build -t gridsweep:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
FROM python:3.11-slim

# Which PyTorch wheel index to install torch from: the CPU-only wheels by default (small image),
# a CUDA index (cu121, cu124, cu126, ...) for GPU workers.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRIDSWEEP_LOG_FORMAT=json

WORKDIR /app

# torch first, in its own layer: it is by far the largest and changes least often.
RUN pip install --index-url "${TORCH_INDEX}" "torch${TORCH_VERSION:+==${TORCH_VERSION}}"

COPY pyproject.toml README.md ./
COPY gridsweep ./gridsweep
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install . && useradd --system --uid 10001 --home-dir /app gridsweep

USER gridsweep
EXPOSE 8000
ENTRYPOINT ["gridsweep"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--no-upgrade"]
