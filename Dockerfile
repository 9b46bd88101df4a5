# The moxflow worker: Prefect (the version the server runs) and moxflow, in /app.
#
#   docker compose build worker      (docker-compose.yml passes the build arguments)
#
# It runs `prefect worker start --pool moxflow` (see docker-compose.yml); flow runs start as
# subprocesses from /app, where prefect.yaml and the flows' entrypoints are.
FROM python:3.11-slim

ARG PREFECT_VERSION=3.9.1
ARG UID=1000
ARG GID=1000

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/moxflow

RUN groupadd --gid "${GID}" moxflow \
    && useradd --uid "${UID}" --gid "${GID}" --create-home --home-dir /home/moxflow moxflow

WORKDIR /app
COPY . /app
# constraints.txt: the versions moxflow's CI last passed with (it pins the same Prefect)
RUN pip install -c /app/constraints.txt "prefect==${PREFECT_VERSION}" /app \
    && rm -rf /app/build /app/*.egg-info

USER moxflow
CMD ["prefect", "worker", "start", "--pool", "moxflow", "--type", "process"]
