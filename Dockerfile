# certctl serve in a container: mount manifests at /manifests and keep /state.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY certctl ./certctl
RUN pip install --no-cache-dir . && useradd --system --uid 65532 certctl \
    && mkdir /state && chown certctl /state
USER 65532
VOLUME ["/state"]
EXPOSE 80 443
ENTRYPOINT ["certctl"]
CMD ["serve", "--manifests", "/manifests", "--state-dir", "/state", \
     "--http-port", "80", "--https-port", "443"]
