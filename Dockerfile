# ztproxy container image.
#
#   docker build -t ztproxy:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#   docker run --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
#       -v $PWD/config.yaml:/etc/ztproxy/config.yaml:ro -p 8080:8080 ztproxy:0.1.0
#
# What the image expects (deploy/README.md has the whole guide):
# - the configuration at /etc/ztproxy/config.yaml (mounted read-only); secrets as files beside it,
#   named by the config's *_file keys; assertion keys in a mounted assertion.keys_dir;
# - a read-only root filesystem is fine: ztproxy writes nothing but to stdout, and to a tmpfs /tmp
#   only when assertion.keys_dir is unset (a throwaway key for a trial); /var/lib/ztproxy belongs
#   to the ztproxy user, for a volume holding keys that `ztproxy keys` writes;
# - it runs as uid/gid 10001, with no capabilities needed (ports 8080 and 9090 are above 1024);
# - the admin listener (server.admin_listen) on port 9090 for the HEALTHCHECK; another address:
#   set ZTPROXY_HEALTHCHECK_URL.

# Stage 1: install ztproxy's dependencies at the versions and hashes of requirements-image.lock
# (binary wheels: no compiler needed), then the wheel of ztproxy built from this repository, into a
# virtualenv that the runtime stage copies. `pip check`: the lock satisfies what ztproxy requires.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/ztproxy
COPY requirements-image.lock ./
RUN /opt/ztproxy/bin/pip install --no-cache-dir --require-hashes -r requirements-image.lock
COPY pyproject.toml README.md ./
COPY ztproxy ./ztproxy
RUN /opt/ztproxy/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/ztproxy/bin/pip install --no-cache-dir --no-deps /wheels/ztproxy-*.whl \
 && /opt/ztproxy/bin/pip check

# Stage 2: the runtime, without the sources, the wheel or pip's cache.
FROM python:3.11-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ztproxy" \
      org.opencontainers.image.description="Identity-aware reverse proxy: the policy enforcement point of a zero-trust network" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
RUN groupadd --system --gid 10001 ztproxy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin ztproxy \
 && install -d -m 0755 /etc/ztproxy \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/ztproxy
COPY --from=build /opt/ztproxy /opt/ztproxy
# Bytecode was compiled when the wheel was installed: nothing is written at import time.
ENV PATH=/opt/ztproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ZTPROXY_CONFIG=/etc/ztproxy/config.yaml \
    ZTPROXY_HEALTHCHECK_URL=http://127.0.0.1:9090/healthz
USER 10001:10001
WORKDIR /
EXPOSE 8080 9090
# SIGTERM drains: readiness fails, then after server.drain_delay the listener closes and
# in-flight requests get server.shutdown_grace to finish.
STOPSIGNAL SIGTERM
# The slim image has no curl: the standard library asks /healthz (exit 1 on any failure).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen(os.environ['ZTPROXY_HEALTHCHECK_URL'], timeout=2).status != 200)"]
ENTRYPOINT ["ztproxy"]
CMD ["run", "-c", "/etc/ztproxy/config.yaml"]
