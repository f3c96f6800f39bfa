# ctgrade: grand-challenge.org algorithm container.
#
# Default: the invoke API (`ctgrade serve` on port 4743, LABEL org.grand-challenge.api-method=invoke),
# built with CUDA + cuDNN in an NVIDIA devel image, run in the matching runtime image.
#   docker build -t ctgrade .
# The image holds two builds: /opt/app/ctgrade without CUDA (the entry point) and the CUDA build
# /opt/app/ctgrade-cuda, which cannot start without the NVIDIA driver. `ctgrade` hands the process
# over to it when the driver and device can run its code; otherwise `--device auto` (the default)
# runs on the CPU after one warning line naming the reason (src/cli/device.rs).
# The exec variant (one `ctgrade run` per job, no label):
#   docker build --build-arg API_METHOD=exec -t ctgrade:exec .
# CPU-only image:
#   docker build --build-arg FEATURES= --build-arg RUNTIME_IMAGE=debian:bookworm-slim -t ctgrade:cpu .
# Machines that cannot pull a build image: build the binary outside and let the image take it
#   (scripts/docker-test.sh does this on a locally made base image):
#   docker build --build-arg PREBUILT=target/release/ctgrade --build-arg BUILD_IMAGE=<base> \
#                --build-arg RUNTIME_IMAGE=<base> -t ctgrade:local .
#   (add --build-arg PREBUILT_CUDA=.gpu/ctgrade for a CUDA build from scripts/build-cuda.sh, with a
#   RUNTIME_IMAGE that holds its CUDA libraries)
ARG BUILD_IMAGE=nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04
ARG RUNTIME_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
ARG API_METHOD=invoke

FROM --platform=linux/amd64 ${BUILD_IMAGE} AS build
ARG FEATURES=cuda,cudnn
ARG PREBUILT=
ARG PREBUILT_CUDA=
# The CUDA capability to compile kernels for (T4 = 75; newer GPUs run it through PTX JIT).
ARG CUDA_COMPUTE_CAP=75
COPY . /src
WORKDIR /src
RUN set -eu; mkdir -p /out; \
    if [ -n "$PREBUILT" ]; then \
      install -m 0755 "$PREBUILT" /out/ctgrade; \
      if [ -n "$PREBUILT_CUDA" ]; then install -m 0755 "$PREBUILT_CUDA" /out/ctgrade-cuda; fi; \
    else \
      apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config; \
      curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; \
      export PATH=/root/.cargo/bin:$PATH CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP; \
      cargo build --release --locked --bin ctgrade; \
      install -m 0755 target/release/ctgrade /out/ctgrade; \
      if [ -n "$FEATURES" ]; then \
        CARGO_TARGET_DIR=target/cuda cargo build --release --locked --features "$FEATURES" --bin ctgrade; \
        install -m 0755 target/cuda/release/ctgrade /out/ctgrade-cuda; \
      fi; \
    fi

FROM --platform=linux/amd64 ${RUNTIME_IMAGE} AS runtime
RUN groupadd -r user && useradd -m --no-log-init -r -g user user
COPY --from=build /out/ /opt/app/
COPY weights/default /opt/app/weights/default
# The root file system is read-only on the platform: the driver's cache of compiled GPU kernels
# lives in /tmp for the container's life.
ENV CUDA_CACHE_PATH=/tmp/.nv/ComputeCache
USER user
WORKDIR /opt/app

# Exec: the platform runs the container once per job.
FROM runtime AS exec
ENTRYPOINT ["/opt/app/ctgrade", "run"]

# Invoke: the platform starts the server once, polls GET /health, then POSTs /invoke per job.
FROM runtime AS invoke
LABEL org.grand-challenge.api-method="invoke"
EXPOSE 4743
ENTRYPOINT ["/opt/app/ctgrade", "serve"]

# API_METHOD=invoke (default) or exec picks the final image.
FROM ${API_METHOD}
