# syntax=docker/dockerfile:1
# Build: docker build -t identity-broker .
# Run:   docker run -p 8000:8000 -e BROKER_SECRET_KEY=... -v $PWD/config:/config identity-broker
FROM python:3.11-slim AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends build-essential pkg-config libxmlsec1-dev \
    libldap-dev libsasl2-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY migrations ./migrations
RUN python -m venv /opt/broker && /opt/broker/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# OpenLDAP's client library for python-ldap: libldap2 on Debian 13, libldap-2.5-0 on Debian 12.
RUN apt-get update && apt-get install -y --no-install-recommends libxmlsec1 libxmlsec1-openssl curl \
    && (apt-get install -y --no-install-recommends libldap2 || apt-get install -y --no-install-recommends libldap-2.5-0) \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin broker
COPY --from=build /opt/broker /opt/broker
COPY config/broker.yaml /config/broker.yaml
ENV PATH=/opt/broker/bin:$PATH BROKER_CONFIG=/config/broker.yaml PYTHONDONTWRITEBYTECODE=1
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["broker", "serve", "--host", "0.0.0.0", "--port", "8000"]
