# flowctl: one image for every role (agent, worker, sink, jobs). Build: docker build -t flowctl .
# The entrypoint is the flowctl CLI; the command is the verb, e.g. `docker run flowctl worker`.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler only for dependencies without a wheel for this platform; it stays in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY jobs ./jobs
COPY schemas ./schemas
RUN python -m venv /opt/flowctl \
    && /opt/flowctl/bin/pip install --upgrade pip \
    && /opt/flowctl/bin/pip install . \
    && /opt/flowctl/bin/flowctl --help > /dev/null

FROM python:3.11-slim
LABEL org.opencontainers.image.title="flowctl" \
      org.opencontainers.image.description="Kubernetes flow analytics for clusters that run GenAI workloads" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/flowctl /opt/flowctl
# Fixed ids so Kubernetes securityContext (runAsUser/fsGroup) and volume ownership match.
# Named volumes mounted on /data/* start as copies of these directories, owned by flowctl.
RUN groupadd --system --gid 10001 flowctl \
    && useradd --system --uid 10001 --gid flowctl --home-dir /home/flowctl --create-home --shell /usr/sbin/nologin flowctl \
    && mkdir -p /data/lake /data/state /data/policies \
    && chown -R flowctl:flowctl /data
ENV PATH=/opt/flowctl/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLOWCTL_LAKE=/data/lake \
    FLOWCTL_STATE_DIR=/data/state
WORKDIR /data
USER 10001:10001
# Prometheus /metrics when FLOWCTL_METRICS_PORT=9100 is set.
EXPOSE 9100
ENTRYPOINT ["flowctl"]
CMD ["--help"]
