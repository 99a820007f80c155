# syntax=docker/dockerfile:1
# The routevpn image: `routevpn operator` and `routevpn agent` (one image, two commands).
#
# Built from Debian bookworm's own python3 (3.11), the Python the project targets.
# Stage 1 builds wheels and a virtualenv; stage 2 copies only the virtualenv into a slim
# runtime: no pip, no compilers, no build files.
#
#   docker build -t routevpn:dev .
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source-only change reuses this layer.
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python3 -m venv /opt/routevpn \
    && /opt/routevpn/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/routevpn/bin/pip wheel --no-cache-dir --wheel-dir /wheels . \
    && /opt/routevpn/bin/pip install --no-cache-dir --no-index --find-links /wheels routevpn \
    && /opt/routevpn/bin/pip uninstall -y pip \
    && /opt/routevpn/bin/routevpn --version

FROM ${DEBIAN_IMAGE}
# python3: the interpreter the virtualenv points at (same path as in the build stage).
# kmod: modprobe for the agent's optional module-loading init container.
# nftables: `nft`, with which the agent writes its TCP MSS clamp (dataplane/nft.py).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 kmod nftables \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
COPY --from=build /opt/routevpn /opt/routevpn
ENV PATH=/opt/routevpn/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root by default (the operator; Pod Security `restricted`). The agent's pod runs it
# as uid 0 with only NET_ADMIN: Kubernetes grants added capabilities to root only.
USER 65532:65532
ENTRYPOINT ["routevpn"]
CMD ["--help"]
LABEL org.opencontainers.image.title="routevpn" \
      org.opencontainers.image.description="Route-based IPsec VPNs (strongSwan + VTI/XFRM) as Kubernetes objects" \
      org.opencontainers.image.licenses="Apache-2.0"
