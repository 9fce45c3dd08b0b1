# GT-Vision central service image.
#
# Build from the repository root:
#   docker build -f packaging/central.Dockerfile -t gtvision-central .
#
# One image serves every central command; pick it with the container command:
#   migrate | api --host 0.0.0.0 --port 8080 | ingest | worker
# No HEALTHCHECK is baked in because only `api` serves HTTP; docker-compose.yml
# probes GET /api/health with the image's Python (no curl needed).

ARG PYTHON_IMAGE=python:3.11-slim

# --- build stage: install the project and its pinned dependencies into a venv
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv

WORKDIR /src

# constraints.txt is a `pip freeze`; drop the line for the project itself
# (an editable `-e <path>` or `gtvision==...`), which pip rejects as a constraint.
COPY constraints.txt ./
RUN grep -vE '^[[:space:]]*(-e|--editable)[[:space:]]|^[[:space:]]*gtvision([[:space:]=<>!~@;]|$)' \
        constraints.txt > /tmp/constraints.txt

# README.md* so that a missing README does not fail the COPY.
COPY pyproject.toml README.md* ./
COPY shared ./shared
COPY central ./central
COPY agent ./agent
COPY devstack ./devstack

RUN /opt/venv/bin/pip install -c /tmp/constraints.txt '.[central]'

# --- runtime stage
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# ffmpeg: the clip worker cuts segments out of recordings.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 gtvision \
    && useradd --system --uid 10001 --gid gtvision \
        --home-dir /home/gtvision --create-home --shell /usr/sbin/nologin gtvision

COPY --from=build /opt/venv /opt/venv

USER gtvision
WORKDIR /home/gtvision

EXPOSE 8080

ENTRYPOINT ["gtvision-central"]
CMD ["api", "--host", "0.0.0.0", "--port", "8080"]
