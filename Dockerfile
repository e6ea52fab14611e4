# syntax=docker/dockerfile:1
# certctl's image: `certctl serve` by default (mount manifests at /manifests, keep
# /state), `certctl controller` and `certctl dataplane` in a cluster (manifests/).
#   docker build -t ghcr.io/certctl/certctl:0.1.0 .
# (the name manifests/ runs; README.md, "Container").
#
# Both stages start from the same Python image: the build stage's compiled modules
# are C extensions for exactly that interpreter.
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a compiler, and wheels of certctl (data plane compiled) and its dependencies ---
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY certctl ./certctl
# certctl/api/crds links here: the wheel ships the CRDs certctl validates with.
COPY crds ./crds
# Compiled files from a checkout (scripts/compile.sh) are for the checkout's Python and
# may be stale: setup.py compiles the modules again, for this one.
RUN find certctl -name '*.so' -delete \
    && pip wheel --no-cache-dir --wheel-dir /wheels '.[route53]' \
    && python -c "import sys, tomllib, zipfile, pathlib; \
mypyc = tomllib.load(open('pyproject.toml', 'rb'))['tool']['certctl']['mypyc']; \
wheel = zipfile.ZipFile(next(pathlib.Path('/wheels').glob('certctl-*.whl'))).namelist(); \
required = [m[:-3] for m in mypyc['modules']] + [mypyc['group'].replace('.', '/') + '__mypyc']; \
missing = [m for m in required if not any(n.startswith(m + '.') and n.endswith('.so') for n in wheel)]; \
sys.exit(f'not compiled: {missing}' if missing else 0)"
# The last command fails the build when setup.py fell back to the sources (a failed
# compile is a warning for `pip install .`): the image must ship the measured modules.

# --- the image: no compiler, no build tools, not root ---
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels 'certctl[route53]' \
    && groupadd --system --gid 65532 certctl \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin \
       certctl \
    && mkdir /state && chown 65532:65532 /state \
    && certctl --help >/dev/null \
    && python -c "import importlib, pathlib, certctl.dataplane as d; \
[importlib.import_module('certctl.dataplane.' + so.name.split('.')[0]) \
 for so in pathlib.Path(d.__file__).parent.glob('*.so') if '__mypyc' not in so.name]; \
assert d.fallbacks == {}, d.fallbacks"
# The last two commands fail the build when the installed command or a compiled module
# does not load here, without the build stage's tools (the sources would run instead).
# The uid manifests/ runs as (runAsUser/runAsGroup 65532).
USER 65532:65532
VOLUME ["/state"]
# Unprivileged ports: publish them as 80 and 443 (`-p 80:8080 -p 443:8443`).
EXPOSE 8080 8443
ENTRYPOINT ["certctl"]
# The CA validates HTTP-01 on port 80 of the name's address (RFC 8555, 8.3), which is the
# host's published port, not 8080: the self-check knocks where the CA will.
CMD ["serve", "--manifests", "/manifests", "--state-dir", "/state", \
     "--http-port", "8080", "--https-port", "8443", "--self-check-port", "80"]
