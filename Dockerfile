# Application image: `bookingbot serve` by default; run `bookingbot worker` from the same image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
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
COPY config.yaml ./config.yaml
RUN mkdir -p /app/var && chown bookingbot /app/var
USER bookingbot
ENV BOOKINGBOT_CONFIG=/app/config.yaml PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/health'); sys.exit(0)"
CMD ["bookingbot", "serve", "--host", "0.0.0.0", "--port", "8080"]
