"""The certctl demo: Pebble issues a certificate that `certctl serve` then serves.

Starts Pebble (with pebble-challtestsrv as its DNS: every name is 127.0.0.1),
a tiny backend on 127.0.0.1:8080, and `certctl serve --manifests examples/`,
waits for the certificate of demo.example.test to be served, shows it with
curl verified against Pebble's root, and stops everything again (unless
--keep-running). Run it through demo/run.sh, which installs what it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
PEBBLE_CONFIG = REPO / "demo" / "pebble" / "pebble-config.json"
PEBBLE_LISTENER_CA = REPO / "demo" / "pebble" / "listener-ca.pem"
HOST = "demo.example.test"
HTTP_PORT = 5002  # Pebble's validator connects here (httpPort in its config)
HTTPS_PORT = 8443
BACKEND_PORT = 8080
PORTS = {14000: "Pebble", 15000: "Pebble management", 8053: "challtestsrv DNS",
         8055: "challtestsrv management", HTTP_PORT: "certctl HTTP",
         HTTPS_PORT: "certctl HTTPS", BACKEND_PORT: "demo backend"}


class Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (f"Hello from the certctl demo backend: you asked for "
                f"{self.headers.get('Host')}{self.path} "
                f"(X-Forwarded-Proto: {self.headers.get('X-Forwarded-Proto')})\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(what: str, check: object, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, requests.RequestException, ssl.SSLError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")


def served_and_verified(root_file: Path) -> bool:
    context = ssl.create_default_context(cafile=str(root_file))
    with socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=2) as raw, \
            context.wrap_socket(raw, server_hostname=HOST):
        return True


@contextlib.contextmanager
def process(args: list[str], *, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **(env or {})})
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep-running", action="store_true",
                        help="keep everything running until Ctrl-C after the demo")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so Pebble and certctl are stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    busy = [f"{port} ({name})" for port, name in PORTS.items() if port_in_use(port)]
    if busy:
        print(f"demo: these ports are in use, stop what holds them first: {', '.join(busy)}",
              file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="certctl-demo-"))
    state = work / "state"
    certctl = str(Path(sys.executable).parent / "certctl")
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", BACKEND_PORT), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    print(f"demo: logs and state in {work}")
    with contextlib.ExitStack() as stack:
        stack.callback(backend.shutdown)
        stack.enter_context(process(
            ["pebble-challtestsrv", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-dns01", "127.0.0.1:8053", "-management", "127.0.0.1:8055", "-defaultIPv6", ""],
            log=work / "challtestsrv.log"))
        stack.enter_context(process(
            ["pebble", "-config", str(PEBBLE_CONFIG), "-dnsserver", "127.0.0.1:8053"],
            log=work / "pebble.log", env={"PEBBLE_VA_NOSLEEP": "1"}))
        wait_for("Pebble", lambda: requests.get("https://localhost:14000/dir", timeout=2,
                                                verify=str(PEBBLE_LISTENER_CA)).ok, timeout=20)
        root = requests.get("https://localhost:15000/roots/0", timeout=5,
                            verify=str(PEBBLE_LISTENER_CA))
        root_file = work / "pebble-root.pem"
        root_file.write_bytes(root.content)
        print("demo: Pebble is up; its root CA is in", root_file)

        command = [certctl, "serve", "--manifests", "examples", "--state-dir", str(state),
                   "--http-port", str(HTTP_PORT), "--https-port", str(HTTPS_PORT),
                   "--self-check-address", "127.0.0.1"]
        print("demo: $ certctl", " ".join(command[1:]))
        started = time.monotonic()
        stack.enter_context(process(command, log=work / "certctl.log"))
        wait_for(f"certctl to serve a certificate for {HOST} (see {work / 'certctl.log'})",
                 lambda: served_and_verified(root_file), timeout=60)
        print(f"demo: certificate for {HOST} issued by Pebble and served after "
              f"{time.monotonic() - started:.2f}s (including certctl's start-up)")

        curl = ["curl", "--silent", "--show-error", "--resolve",
                f"{HOST}:{HTTPS_PORT}:127.0.0.1", "--cacert", str(root_file),
                f"https://{HOST}:{HTTPS_PORT}/"]
        print("demo: $", " ".join(curl))
        result = subprocess.run(curl, capture_output=True, text=True, check=False)
        print(result.stdout.strip() or result.stderr.strip())
        status = subprocess.run([certctl, "status", "certificate", "demo-example-tls", "-n",
                                 "default", "--state-dir", str(state)], capture_output=True,
                                text=True, check=False)
        print("demo: $ certctl status certificate demo-example-tls -n default "
              f"--state-dir {state}")
        print(status.stdout.strip())
        if result.returncode != 0:
            print("demo: curl failed", file=sys.stderr)
            return 1
        if args.keep_running:
            print("demo: still serving on https://127.0.0.1:8443; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    print("demo: done, everything stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
