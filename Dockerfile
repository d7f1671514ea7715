# The stream detector as a container: `docker build -t stream-detector .`
# The same image runs the service (`run`, the default) and the traffic
# simulator (`simulate ...`); see deploy/docker-compose.yml.

# Build in one stage, so the final image holds the installed package and its
# dependencies but neither the source tree nor pip's build leftovers.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the Cython modules; the final stage needs none.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip install --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAM_DETECTOR_METRICS_PORT=9108 \
    STREAM_DETECTOR_LOG_FORMAT=json
COPY --from=build /install /usr/local
# A fixed numeric uid lets Kubernetes' runAsNonRoot verify it without a passwd lookup.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin detector
USER 10001:10001
WORKDIR /tmp

EXPOSE 9108
# /healthz answers 503 while the broker is unreachable; urlopen raises on it,
# so the one-liner exits non-zero. Port from the same variable the service reads.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STREAM_DETECTOR_METRICS_PORT', '9108') + '/healthz', timeout=4)"]

ENTRYPOINT ["stream-detector"]
CMD ["run"]
