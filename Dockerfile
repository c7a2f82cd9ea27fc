# ztproxy container image: `docker build -t ztproxy .`
# Config and keys are mounted read-only; the root filesystem can be read-only too.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ztproxy ./ztproxy
RUN python -m venv /opt/ztproxy \
 && /opt/ztproxy/bin/pip install --no-cache-dir .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="ztproxy" \
      org.opencontainers.image.description="Identity-aware reverse proxy: the policy enforcement point of a zero-trust network" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/ztproxy /opt/ztproxy
ENV PATH=/opt/ztproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    ZTPROXY_CONFIG=/etc/ztproxy/config.yaml
USER 65532:65532
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["ztproxy", "run"]
