# DMHA server image (CPU). Build elsewhere with: docker build -t dmha .
# Run:  docker run -p 50051:50051 -p 9464:9464 -v dmha-data:/data dmha
# No Docker engine runs on the development machines; this file is kept correct by review.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DMHA_DATA_DIR=/data \
    OMP_NUM_THREADS=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first, from the CPU index: a plain `torch` requirement pulls the multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY dmha ./dmha
COPY protos ./protos
COPY server ./server
COPY clients ./clients
COPY configs ./configs
RUN pip install .

# Prepare the default model at build time so containers start in seconds.
RUN dmha setup --config configs/default.yaml

# A fixed uid, so Kubernetes can give it shared volumes (fsGroup, deploy/k8s/); /registry
# is where deploy/ mounts the version registry every replica and worker shares.
RUN useradd --system --uid 10001 --create-home dmha && mkdir -p /data /registry && chown -R dmha /data /registry
USER 10001
VOLUME ["/data"]
# 50051 gRPC, 9464 metrics, 8080 for `dmha gateway --host 0.0.0.0` (the web page; run it as a second container).
EXPOSE 50051 9464 8080
HEALTHCHECK --interval=30s --timeout=5s CMD ["dmha", "health"]
CMD ["dmha", "serve", "--config", "configs/default.yaml", "--host", "0.0.0.0"]
