# pkgfarm: one image for both roles.
#   master:  master serve --config /etc/pkgfarm/config.yaml   (as the unprivileged pkgfarm user)
#   worker:  worker run   --config /etc/pkgfarm/config.yaml   (as root: it installs build deps)
#
# Build from the repository root:  docker build -t pkgfarm .
# It needs only the classic builder (no BuildKit, no buildx, no build secrets), so Debian 12's
# docker.io builds it as it is.
#
# Behind a proxy that intercepts TLS with its own CA: put that CA (PEM, *.crt) into
# docker/ca-certificates/ and pass the proxy as a build argument, e.g.
#   docker build --build-arg HTTPS_PROXY=http://proxy:3128 -t pkgfarm .
# The CA is used while the image is built (pip, and apt when the mirror is https) and is not
# in the image that comes out: the last stage copies finished file trees only.
# A PyPI mirror: --build-arg PIP_INDEX_URL=https://mirror/simple.
# Another base image (a local mirror of Debian 12): --build-arg DEBIAN_IMAGE=registry/debian:12.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# -- system: the Debian packages the master and the workers need at run time ------------------
FROM ${DEBIAN_IMAGE} AS system

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8

COPY docker/ca-certificates/ /tmp/build-ca/

# python3: Debian's own (3.11 on bookworm), which the venv below runs on. dpkg-dev, fakeroot,
# xz-utils and zstd make and read archives, rpm, createrepo-c and libarchive-tools (bsdtar) the
# RPM and pacman ones; bubblewrap confines builds where the container
# allows it; gnupg signs the repository; git fetches sources; curl serves the healthchecks;
# redis-tools gives redis-cli for looking at the broker. python3-venv is needed only to make the
# venv, and is small.
# The package lists are kept on purpose: workers install build dependencies with apt-get at
# build time without an `apt-get update` of their own. Rebuild the image now and then so they
# stay fresh.
# Acquire::https::CAInfo replaces apt's trust instead of adding to it, so apt gets one bundle:
# the base image's own CAs, where it has them (bookworm-slim has none before ca-certificates
# is installed below), and the extra ones.
RUN set -eu; \
    if ls /tmp/build-ca/*.crt >/dev/null 2>&1; then \
        { if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
              cat /etc/ssl/certs/ca-certificates.crt; fi; \
          cat /tmp/build-ca/*.crt; } > /tmp/build-ca.pem; \
        echo 'Acquire::https::CAInfo "/tmp/build-ca.pem";' > /etc/apt/apt.conf.d/99build-ca; \
    fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        python3 python3-venv \
        dpkg-dev fakeroot xz-utils zstd \
        rpm createrepo-c libarchive-tools \
        bubblewrap gnupg git \
        ca-certificates curl redis-tools; \
    apt-get clean; \
    rm -rf /tmp/build-ca /tmp/build-ca.pem /etc/apt/apt.conf.d/99build-ca

# The master's data directory exists in the image so that a fresh named volume mounted on it
# inherits its owner.
RUN useradd --system --user-group --home-dir /var/lib/pkgfarm --shell /usr/sbin/nologin pkgfarm \
    && install -d -o pkgfarm -g pkgfarm -m 0750 /var/lib/pkgfarm \
    && install -d -m 0755 /etc/pkgfarm /var/tmp/pkgfarm /srv/pkgfarm

# -- build: the venv with pkgfarm and its Python dependencies ---------------------------------
FROM system AS build

# The extra CAs join this stage's bundle, which pip is pointed at.
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/build/
RUN update-ca-certificates >/dev/null
ARG PIP_INDEX_URL
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Dependencies first (they change less often than the code): install_requires from setup.cfg.
WORKDIR /src
COPY setup.cfg pyproject.toml ./
RUN python3 -m venv /opt/pkgfarm \
    && python3 -c 'import configparser; c = configparser.ConfigParser(); c.read("setup.cfg"); print(c["options"]["install_requires"])' \
        | sed -e 's/ *#.*//' -e '/^$/d' > /tmp/requirements.txt \
    && /opt/pkgfarm/bin/pip install -q "setuptools>=68" wheel -r /tmp/requirements.txt

COPY README.md ./
COPY common ./common
COPY master ./master
COPY worker ./worker
RUN /opt/pkgfarm/bin/pip install -q --no-deps --no-build-isolation /src \
    && /opt/pkgfarm/bin/master --help >/dev/null \
    && /opt/pkgfarm/bin/worker --help >/dev/null

# -- the image: the system and the venv, nothing of the build's CAs or caches -----------------
FROM scratch

COPY --from=system / /
COPY --from=build /opt/pkgfarm /opt/pkgfarm
COPY examples /srv/pkgfarm/examples

ENV PATH=/opt/pkgfarm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PKGFARM_CONFIG=/etc/pkgfarm/config.yaml

WORKDIR /srv/pkgfarm
EXPOSE 8080

CMD ["master", "serve", "--config", "/etc/pkgfarm/config.yaml"]
