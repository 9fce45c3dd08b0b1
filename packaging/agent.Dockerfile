# GT-Vision edge agent image.
#
# Build from the repository root:
#   docker build -f packaging/agent.Dockerfile -t gtvision-agent .
#
# Run with the configuration mounted read-only and a volume for the data, e.g.:
#   docker run -d --init --restart unless-stopped \
#     -v /etc/gtvision/agent.yaml:/etc/gtvision/agent.yaml:ro \
#     -v gtvision-agent-data:/var/lib/gtvision-agent \
#     gtvision-agent
# (--init reaps the ffmpeg processes the agent starts and forwards signals.)

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
COPY agent ./agent
COPY central ./central
COPY devstack ./devstack

RUN /opt/venv/bin/pip install -c /tmp/constraints.txt '.[agent]'

# --- runtime stage
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# ffmpeg: the agent records the RTSP cameras with it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 gtvision \
    && useradd --system --uid 10001 --gid gtvision \
        --home-dir /var/lib/gtvision-agent --no-create-home --shell /usr/sbin/nologin gtvision \
    && install -d -o gtvision -g gtvision -m 0750 /var/lib/gtvision-agent \
    && install -d -m 0755 /etc/gtvision

COPY --from=build /opt/venv /opt/venv

# Created and chowned above, before VOLUME, so a fresh named volume inherits
# the ownership.
VOLUME ["/var/lib/gtvision-agent"]

USER gtvision
WORKDIR /var/lib/gtvision-agent

ENTRYPOINT ["gtvision-agent"]
CMD ["run", "--config", "/etc/gtvision/agent.yaml"]
