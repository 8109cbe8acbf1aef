# Image for docker-compose.yml: the package and its examples.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY taskiq_batching ./taskiq_batching
RUN pip install --no-cache-dir .
COPY examples ./examples
ENV PYTHONUNBUFFERED=1
