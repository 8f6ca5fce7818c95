"""The gateway on a real loopback port, for tests that need real HTTP: in a thread, or in its own process.

`ServerThread(app)` runs uvicorn in a thread of the test process (fast start; the app's lifespan
runs). `GatewayProcess(env)` runs `uvicorn adaudit.service.app:create_app --factory` as its own
process with `ADAUDIT_*` settings from `env`, so a test can signal it (SIGTERM) and read what it
left behind. `held_request` opens a raw socket and sends a request whose body is held back, so a
request stays in flight for as long as a test needs it to.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def random_png_base64(seed: int, height: int, width: int) -> str:
    """A seeded noise picture as a base64 PNG: an ad's `image_base64`."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class ServerThread:
    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the gateway thread did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class GatewayProcess:
    def __init__(self, env: dict[str, str], workdir: Path):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = Path(workdir) / f"gateway-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ADAUDIT_")}
        self.env.update({"OMP_NUM_THREADS": "1", **env})
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "GatewayProcess":
        command = [sys.executable, "-m", "uvicorn", "adaudit.service.app:create_app", "--factory", "--host", HOST,
                   "--port", str(self.port), "--log-level", "info"]
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(command, env=self.env, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the gateway exited:\n{self.output()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the gateway was not ready after {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def held_request(url: str, path: str, body: bytes, headers: dict[str, str] | None = None,
                 held: int = 1) -> tuple[socket.socket, bytes]:
    """Send a POST with all but the last `held` bytes of its body; returns (socket, the rest to send)."""
    host, port = url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    connection = socket.create_connection((host, int(port)), timeout=60)
    connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body[:-held])
    return connection, body[-held:]


def finish_request(connection: socket.socket, rest: bytes) -> tuple[int, bytes]:
    """Send the held bytes and read the answer: (status, body)."""
    connection.sendall(rest)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += connection.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += connection.recv(65536)
    connection.close()
    return int(head.split()[1]), body
