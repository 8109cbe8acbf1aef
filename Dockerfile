# Image for docker-compose.yml: the package with its [redis] extra (the
# examples use taskiq-redis), at the locked versions, and its examples.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY constraints ./constraints
COPY taskiq_batching ./taskiq_batching
RUN pip install --no-cache-dir -c constraints/lock.txt ".[redis]"
COPY examples ./examples
ENV PYTHONUNBUFFERED=1
