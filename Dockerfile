# pkgfarm: one image for both roles.
#   master:  master serve --config /etc/pkgfarm/config.yaml
#   worker:  worker run   --config /etc/pkgfarm/config.yaml
# Build from the repository root: docker build -t pkgfarm .
FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# dpkg-dev and fakeroot build the packages; curl serves the master's healthcheck;
# redis-tools gives redis-cli for looking at the broker from inside a container.
# The package lists are kept on purpose: workers install build dependencies with
# `apt-get install` at build time and do not run `apt-get update` themselves.
# Rebuild the image now and then so those lists stay fresh.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 \
        python3-venv \
        python3-pip \
        dpkg-dev \
        bubblewrap \
        fakeroot \
        ca-certificates \
        curl \
        redis-tools

RUN python3 -m venv /opt/pkgfarm
ENV PATH=/opt/pkgfarm/bin:$PATH

WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY common ./common
COPY master ./master
COPY worker ./worker
RUN pip install /src \
    && master --help >/dev/null \
    && worker --help >/dev/null

COPY examples /srv/pkgfarm/examples

# The master may run as this unprivileged user (see the compose files); its data
# directory is created here so a fresh named volume mounted on it inherits the owner.
# Workers stay root: they install build dependencies with apt-get.
RUN useradd --system --user-group --home-dir /var/lib/pkgfarm --shell /usr/sbin/nologin pkgfarm \
    && install -d -o pkgfarm -g pkgfarm -m 0750 /var/lib/pkgfarm \
    && install -d -m 0755 /etc/pkgfarm /var/tmp/pkgfarm

ENV PKGFARM_CONFIG=/etc/pkgfarm/config.yaml
WORKDIR /srv/pkgfarm
EXPOSE 8080

CMD ["master", "serve", "--config", "/etc/pkgfarm/config.yaml"]
