# certctl serve in a container: mount manifests at /manifests and keep /state.
# It runs unprivileged, so it listens on 8080/8443: publish them as 80/443.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY certctl ./certctl
RUN pip install --no-cache-dir . && useradd --system --uid 65532 certctl \
    && mkdir /state && chown certctl /state
USER 65532
VOLUME ["/state"]
EXPOSE 8080 8443
ENTRYPOINT ["certctl"]
CMD ["serve", "--manifests", "/manifests", "--state-dir", "/state", \
     "--http-port", "8080", "--https-port", "8443"]
