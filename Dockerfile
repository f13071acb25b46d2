# One image for every Fapiao Sync service; the command picks the service:
#   python -m services.issuer            (the default)
#   python -m services.issuer migrate    (migrations only)
# Configuration comes from FAPIAO_* environment variables (see shared/settings.py and
# docker-compose.yml). Build: docker build -t fapiao-sync .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed numeric uid/gid so orchestrators can verify "runs as non-root" without /etc/passwd.
RUN groupadd --system --gid 10001 fapiao \
 && useradd --system --uid 10001 --gid fapiao --create-home --home-dir /home/fapiao \
            --shell /usr/sbin/nologin fapiao

# Only what the package needs, so editing tests or docs does not invalidate this layer.
WORKDIR /src
COPY pyproject.toml requirements.lock ./
COPY fapiao ./fapiao
COPY shared ./shared
COPY services ./services
# A regular (non-editable) install without the [dev] extra; the source tree is removed
# afterwards so the code that runs is the installed one in site-packages.
RUN pip install -c requirements.lock . \
 && cd / \
 && rm -rf /src

WORKDIR /home/fapiao
USER 10001:10001

# Inside a container the service must listen on every interface; the settings default
# (127.0.0.1) would make the published port unreachable. FAPIAO_PORT is deliberately not
# set here: each service keeps its own default unless the deployment sets it.
ENV FAPIAO_HOST=0.0.0.0

EXPOSE 8000

# Shell form on purpose: FAPIAO_PORT is expanded at run time, so every service using this
# image (issuer 8000, taxstore 8100, ...) is probed on its own port. /healthz = alive.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${FAPIAO_PORT:-8000}/healthz', timeout=4)" || exit 1

CMD ["python", "-m", "services.issuer"]
