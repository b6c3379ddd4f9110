# Image for the Crosspaths worker and CLI (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY geo geo
COPY anonymizers anonymizers
COPY schemas schemas
COPY streams streams
RUN pip install --no-cache-dir .
ENTRYPOINT []
