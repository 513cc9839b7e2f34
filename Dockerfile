# sbnn serving images.
#   default (runtime): torch, every sampler; CPU build of torch unless
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126   (run with --gpus all)
#   --target slim: no torch; onnxruntime on the bundled models' exported frozen-bank graphs (SBNN_BACKEND=onnx)
# Air-gapped: put the wheels in deploy/wheelhouse (docs/deploy.md) and pass --build-arg WHEELHOUSE=1.
# No `# syntax=` line: BuildKit would fetch that frontend from a registry, which an air-gapped build cannot.
ARG BASE_IMAGE=python:3.11-slim
# The build stages also need binutils' `strip` (deploy/trim-venv.sh): the full image has it. Same Python as
# BASE_IMAGE: the virtualenv built here runs there.
ARG BUILD_IMAGE=python:3.11

FROM ${BUILD_IMAGE} AS build
ARG WHEELHOUSE=0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first, in their own layer: code changes do not reinstall torch.
COPY deploy/constraints.txt deploy/constraints.txt
COPY deploy/wheelhouse/ /wheelhouse/
# $source is two words on purpose (an option and its value).
# hadolint ignore=SC2086
RUN python3 -m venv /opt/sbnn \
 && if [ "$WHEELHOUSE" = "1" ]; then source="--no-index --find-links /wheelhouse"; \
    else source="--extra-index-url $TORCH_INDEX_URL"; fi \
 && /opt/sbnn/bin/pip install $source -c deploy/constraints.txt \
      torch numpy pydantic pydantic-settings safetensors typer rich fastapi uvicorn httptools uvloop orjson prometheus-client watchfiles setuptools \
      grpcio grpcio-health-checking protobuf sqlalchemy psycopg psycopg-binary \
 && /opt/sbnn/bin/pip install $source --no-deps -c deploy/constraints.txt tokenizers
COPY pyproject.toml README.md ./
COPY app/ app/
RUN /opt/sbnn/bin/pip install --no-deps --no-index --no-build-isolation . \
 && find /opt/sbnn -name '__pycache__' -prune -exec rm -rf {} +

# The bundled models with their ONNX exports (torch is needed to write them, not to serve them).
FROM build AS export
ARG WHEELHOUSE=0
# hadolint ignore=SC2086
RUN if [ "$WHEELHOUSE" = "1" ]; then source="--no-index --find-links /wheelhouse"; else source=""; fi \
 && /opt/sbnn/bin/pip install $source -c deploy/constraints.txt onnx onnxruntime onnxscript
COPY models/ /models/
RUN for model in /models/*/; do /opt/sbnn/bin/sbnn export-onnx "$model"; done

FROM ${BUILD_IMAGE} AS build-slim
ARG WHEELHOUSE=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY deploy/constraints.txt deploy/constraints.txt
COPY deploy/wheelhouse/ /wheelhouse/
# hadolint ignore=SC2086
RUN python3 -m venv /opt/sbnn \
 && if [ "$WHEELHOUSE" = "1" ]; then source="--no-index --find-links /wheelhouse"; else source=""; fi \
 && /opt/sbnn/bin/pip install $source -c deploy/constraints.txt \
      onnxruntime numpy safetensors pydantic pydantic-settings typer rich fastapi uvicorn httptools uvloop orjson prometheus-client watchfiles setuptools \
      grpcio grpcio-health-checking protobuf sqlalchemy psycopg psycopg-binary \
 && /opt/sbnn/bin/pip install $source --no-deps -c deploy/constraints.txt tokenizers
COPY pyproject.toml README.md ./
COPY app/ app/
# --no-deps: the package's torch requirement is for the torch backend, which this image does not run.
RUN /opt/sbnn/bin/pip install --no-deps --no-index --no-build-isolation . \
 && find /opt/sbnn -name '__pycache__' -prune -exec rm -rf {} +

# What the serving images leave out of a build's virtualenv: pip, torch's headers, tests and test binaries, the
# test suites inside sympy, networkx and numpy, and the symbol tables of shared objects (deploy/trim-venv.sh).
FROM build AS runtime-files
COPY deploy/trim-venv.sh /tmp/trim-venv.sh
RUN sh /tmp/trim-venv.sh /opt/sbnn

FROM build-slim AS slim-files
COPY deploy/trim-venv.sh /tmp/trim-venv.sh
RUN sh /tmp/trim-venv.sh /opt/sbnn

# What both serving images share: the user, the settings, the health check, the command.
FROM ${BASE_IMAGE} AS serving-base
ARG SBNN_VERSION=0.1.0
ARG SBNN_REVISION=unknown
LABEL org.opencontainers.image.title="sbnn" \
      org.opencontainers.image.description="Uncertainty scoring with singular (low-rank) Bayesian neural networks: predictions, their uncertainty and an accept/refer/reject gate" \
      org.opencontainers.image.version="${SBNN_VERSION}" \
      org.opencontainers.image.revision="${SBNN_REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="sbnn"
RUN groupadd --system --gid 10001 sbnn \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sbnn \
 && mkdir -p /var/lib/sbnn/audit && chown 10001:10001 /var/lib/sbnn/audit
# REST on SBNN_PORT, gRPC (Open Inference Protocol, grpc.health.v1) on SBNN_GRPC_PORT. The audit trail is on:
# SQLite under SBNN_AUDIT_DIR, a volume (mount one that outlives the container; SBNN_AUDIT_URL for PostgreSQL).
ENV PATH=/opt/sbnn/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SBNN_MODELS=/models \
    SBNN_HOST=0.0.0.0 \
    SBNN_PORT=8000 \
    SBNN_GRPC_PORT=8081 \
    SBNN_AUDIT_DIR=/var/lib/sbnn/audit
VOLUME ["/var/lib/sbnn/audit"]
USER 10001:10001
EXPOSE 8000 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, sys, urllib.request as u; u.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ['SBNN_PORT'], timeout=2); sys.exit(0)"]
# On SIGTERM requests in flight drain for SBNN_SHUTDOWN_TIMEOUT_S (30 s), the rest are cancelled, and the exit
# status is 0: give the stop more than that (docker stop -t 35; compose stop_grace_period; Kubernetes'
# terminationGracePeriodSeconds). The root filesystem may be read-only: only /tmp (or SBNN_TMP_DIR) is written.
STOPSIGNAL SIGTERM
CMD ["sbnn", "serve"]

FROM serving-base AS slim
COPY --from=slim-files /opt/sbnn /opt/sbnn
COPY --from=export /models/ /models/
ENV SBNN_BACKEND=onnx

FROM serving-base AS runtime
COPY --from=runtime-files /opt/sbnn /opt/sbnn
# The bundled models; mount more as /models/<name> (read-only), or a whole repository over /models.
COPY models/ /models/
