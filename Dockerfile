# syntax=docker/dockerfile:1
# spendgate: the LLM cost and latency proxy.
#
#   docker build -t spendgate .
#   docker run --rm -p 127.0.0.1:4000:4000 spendgate       # embedded default config
#   docker run --rm -p 4000:4000 -v $PWD/spendgate.yaml:/etc/spendgate/spendgate.yaml:ro \
#       -e SPENDGATE_CONFIG=/etc/spendgate/spendgate.yaml -e OPENAI_API_KEY spendgate
#
# Two stages on the same pinned base: the builder installs the package and its
# dependencies into a virtualenv at /opt/spendgate; the runtime copies only that
# virtualenv (no pip cache, no build tree). The tokenizer files and the price
# catalog are package data (service/accounting/data/), so installing the package brings them;
# the builder checks that they arrived. Every wheel spendgate needs (uvloop,
# httptools, tiktoken, orjson, pydantic-core) is prebuilt for amd64 and arm64, so
# no compiler is installed.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/spendgate
WORKDIR /src
# README* matches nothing harmlessly if the readme is absent; pyproject names it.
COPY pyproject.toml README* ./
COPY service ./service
COPY exporters ./exporters
# pip byte-compiles here, so the read-only runtime never needs to write .pyc files.
# -I: nothing from this build directory on sys.path: the installed package is what runs.
RUN /opt/spendgate/bin/pip install . \
    && /opt/spendgate/bin/python -I -c "from importlib.resources import files; \
d = files('spendgate.accounting') / 'data'; \
missing = [n for n in ('prices.json', 'SHA256SUMS', 'cl100k_base.tiktoken', 'o200k_base.tiktoken') if not (d / n).is_file()]; \
assert not missing, f'package data missing from the install: {missing}'" \
    && /opt/spendgate/bin/spendgate --version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="spendgate" \
      org.opencontainers.image.description="LLMOps sidecar: a transparent proxy that counts, prices and budgets every LLM call" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid so Kubernetes runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 spendgate \
    && useradd --system --uid 10001 --gid spendgate --no-create-home \
       --home-dir /var/lib/spendgate --shell /usr/sbin/nologin spendgate \
    && mkdir -p /var/lib/spendgate /etc/spendgate \
    && chown spendgate:spendgate /var/lib/spendgate
COPY --from=builder /opt/spendgate /opt/spendgate
ENV PATH=/opt/spendgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The working directory is the one writable place: the default SQLite budget store
# (sqlite:///spendgate-data/...) is relative to it. Mount a volume here to keep it,
# or use a redis:// store (docker-compose.yml and the Kubernetes manifests do).
WORKDIR /var/lib/spendgate
USER 10001:10001
EXPOSE 4000
# No curl in slim images: the interpreter probes /healthz. urlopen raises (exit 1) on
# a refused connection, a timeout or any non-2xx status.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/healthz', timeout=4)"]
ENTRYPOINT ["spendgate"]
# Off loopback the proxy must be told which Host names it serves (server.allowed_hosts;
# any other Host gets 421, against DNS rebinding). This stands in for the key when the
# config does not set it: the loopback names, so `docker run -p 127.0.0.1:4000:4000`
# works as http://localhost:4000 and nothing else does. Not "*": a config mounted later
# may hold provider keys (custody), and a forgotten key must not leave it open to any
# name. Reached by another name, set the key or override: -e SPENDGATE_ALLOWED_HOSTS=a,b
ENV SPENDGATE_ALLOWED_HOSTS=localhost,127.0.0.1,::1
# The config comes from $SPENDGATE_CONFIG when set (docker-compose.yml and the
# Kubernetes manifests set it to /etc/spendgate/spendgate.yaml, with allowed_hosts),
# else the embedded default: upstreams openai and anthropic, the caller's credentials
# forwarded (no provider key in the image).
CMD ["serve", "--host", "0.0.0.0", "--port", "4000"]
