# tasklane: one image for every role. The api is the default command; the chart runs Celery
# workers (`tasklane worker`) and beat (`tasklane beat`) from the same image by changing only
# the container's args.
#
#   docker build -t tasklane:0.1.0 .
#   docker run --rm -p 8000:8000 tasklane:0.1.0
#
# Both stages start from the same base image (one ARG): the venv built in "build" links to
# /usr/local/bin/python3.11, so it must run on the very same interpreter in "runtime".
# The tag pins the Python patch release and the Debian release. For reproducible builds pin
# the digest too, keeping the tag for readers; the multi-arch index digest comes from
#   docker buildx imagetools inspect python:3.11.17-slim-bookworm
# and is passed as
#   docker build --build-arg PYTHON_IMAGE=python:3.11.17-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

# --- build: the project wheel and its runtime dependencies, installed into /opt/venv --------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
RUN python -m venv /opt/venv
# The runtime dependencies, exactly as locked and hash-checked (`make lock` writes the file):
# an image built next year runs the celery and kombu releases the wire contract test ran on.
# Wheels only: every locked package ships one for CPython 3.11 on amd64 and arm64, so this
# stage needs no compiler (add build tools here, never in "runtime", if one ever does not).
# A layer of its own, rebuilt only when the lock changes.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r requirements.lock
# pyproject names README.md as the long description: the wheel cannot be built without it.
COPY pyproject.toml README.md ./
COPY app ./app
# A regular (non-editable) install of the project alone (its dependencies are all above;
# --no-deps keeps pip from resolving anything the lock did not pin), byte-compiled, so a
# read-only root FS never needs to write a .pyc at start-up.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

# --- runtime: the interpreter, the venv and nothing else -------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="tasklane" \
      org.opencontainers.image.description="One TaskManager API for FastAPI background work: in-process in single mode, Celery + Redis + KEDA in scaled mode." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A passwd entry for the numeric user below, for whatever looks the uid up (pwd, getpass).
RUN groupadd --gid 10001 tasklane \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tasklane

# Owned by root: the process cannot change its own code.
COPY --from=build /opt/venv /opt/venv

# TASKLANE_LOG_FORMAT=json: one JSON object per log line for the cluster's log collector.
# PROMETHEUS_MULTIPROC_DIR: `tasklane serve` and `tasklane worker` create and wipe it at start;
# it lives under /tmp, the only writable path once the chart makes the root FS read-only (an
# emptyDir is mounted there).
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TASKLANE_LOG_FORMAT=json \
    PROMETHEUS_MULTIPROC_DIR=/tmp/tasklane-metrics

# Empty on purpose: the code runs from the installed package, and Celery puts the working
# directory first on sys.path, where a source checkout would shadow it.
WORKDIR /app

# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001

# 8000: the api (`tasklane serve`); 9464: a worker's metrics endpoint (worker_metrics_port).
EXPOSE 8000 9464

# No HEALTHCHECK: the one image runs the api, workers and beat, and only the api serves HTTP;
# the chart gives each role its own probes (/healthz and /readyz, `tasklane status --worker`).
ENTRYPOINT ["tasklane"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
