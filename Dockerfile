# The one image behind every mjqueue service in docker-compose.yml (worker, beat, webhook, flower, simulator).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker worker
COPY tasks tasks
COPY simulator simulator
COPY bench bench
RUN pip install '.[s3]' && useradd --create-home --uid 1000 mjq && mkdir -p /state /media && chown mjq /state /media
COPY flower.conf ./
USER mjq
ENV MJQ_STATE_DIR=/state MJQ_MEDIA_DIR=/media
