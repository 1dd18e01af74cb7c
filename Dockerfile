# GPU image for the bot and its worker. Build: docker build -t animabot .
# Run:   docker run --gpus all -e DISCORD_TOKEN -e TELEGRAM_TOKEN -v hf-cache:/home/app/.cache/huggingface -v animabot-data:/app/data animabot
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 app
WORKDIR /app
COPY --chown=app:app . /app
USER app

# Same install line as the README's quick start.
RUN python3 -m venv .venv && .venv/bin/pip install -e ".[gpu]"

VOLUME ["/home/app/.cache/huggingface", "/app/data"]
CMD [".venv/bin/python", "-m", "bot"]
