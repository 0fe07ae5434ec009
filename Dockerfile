# Conveyor with the scale-out extras (Celery, Redis client, boto3). See docs/deploy.md.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 CONVEYOR_HOME=/var/lib/conveyor
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 1000 conveyor \
    && mkdir -p /var/lib/conveyor && chown conveyor /var/lib/conveyor
WORKDIR /app
COPY pyproject.toml README.md ./
COPY conveyor ./conveyor
RUN pip install ".[scale]"
USER conveyor
EXPOSE 8000
CMD ["conveyor", "serve", "--executor", "celery", "--host", "0.0.0.0", "--port", "8000"]
