"""Running the tritonserver binary that the PyPI package nvidia-pytriton bundles (CPU here).

The package ships the server, the python backend and per-Python-version stubs, but not laid
out as `--backend-directory` expects; `TritonServer` makes that layout with symlinks (a
copied stub loses its RPATH), puts this virtual environment first on PATH (the stub runs the
first `python3` it finds) and the base interpreter's `lib/` on LD_LIBRARY_PATH (the stub links
libpython3.11). It waits until the server is ready, and on stop terminates it and removes the
shared-memory regions its python backend stubs mapped in /dev/shm (only its own: another server may
be running on the machine). All three endpoints listen on `host` (loopback by default).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable


class TritonError(RuntimeError):
    pass


def pytriton_folder() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("nvidia-pytriton is not installed: pip install nvidia-pytriton==0.7.0 (a dependency of adaudit)")
    return Path(list(spec.submodule_search_locations)[0])


def backend_directory(target: Path) -> Path:
    """`target/python/` holding symlinks to the python backend, its utils and the 3.11 stub."""
    server = pytriton_folder() / "tritonserver"
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    links = {
        "libtriton_python.so": server / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": server / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": server / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    for name, source in links.items():
        if not source.exists():
            raise TritonError(f"{source} is missing from nvidia-pytriton")
        link = python / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return target


def server_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    libraries = [str(Path(sys.base_prefix) / "lib"), str(pytriton_folder().parent / "nvidia_pytriton.libs")]
    if environment.get("LD_LIBRARY_PATH"):
        libraries.append(environment["LD_LIBRARY_PATH"])
    environment["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
    return environment


SHM_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


def shared_memory_of(session: int) -> set[str]:
    """The python backend's /dev/shm regions mapped by the processes of one session (a server and its stubs)."""
    regions = set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as stream:
                if int(stream.read().rsplit(")", 1)[1].split()[3]) != session:  # state ppid pgrp session
                    continue
            with open(stat[:-4] + "maps") as stream:
                regions.update(line.split()[-1] for line in stream if SHM_PREFIX in line)
        except (OSError, IndexError, ValueError):
            continue
    return regions


def session_alive(session: int) -> bool:
    """Whether any process of the session is still alive (not a zombie)."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and fields[3] == str(session) and fields[0] != "Z":
            return True
    return False


def end_session(session: int, timeout: float = 10.0) -> None:
    """SIGKILL every process of `session` (a server and its model stubs) and wait until none is alive."""
    try:
        os.killpg(session, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while session_alive(session) and time.monotonic() < deadline:
        time.sleep(0.05)


def clean_shared_memory(regions: set[str] | None = None) -> None:
    """Remove the given regions; None: every python-backend region (only when no other server runs)."""
    for region in glob.glob(SHM_PREFIX + "*") if regions is None else regions:
        try:
            os.unlink(region)
        except OSError:
            pass


class TritonServer:
    """A tritonserver process: `with TritonServer(repo, ...) as server:` starts it and waits until ready."""

    def __init__(self, repository: Path, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 log_file: Path | None = None, ready_timeout: float = 120.0, host: str = "127.0.0.1",
                 show_output: bool = False):
        self.repository = Path(repository).resolve()
        self.host = host  # the address all three endpoints listen on (tritonserver's default is 0.0.0.0)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.log_file = log_file
        self.show_output = show_output  # the server's own log to this process's stdout (`adaudit triton`)
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None
        self._backends: Path | None = None

    def command(self) -> list[str]:
        binary = pytriton_folder() / "tritonserver" / "bin" / "tritonserver"
        return [str(binary), f"--model-repository={self.repository}", f"--backend-directory={self._backends}",
                f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}", f"--http-address={self.host}", f"--grpc-address={self.host}",
                f"--metrics-address={self.host}", "--allow-gpu-metrics=false",
                "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
                "--disable-auto-complete-config", "--exit-on-error=true"]

    def start(self, interrupted: Callable[[], bool] = lambda: False) -> "TritonServer":
        """Start the server and wait until it is ready. `interrupted`: polled while it loads; when it turns
        true the server is stopped and KeyboardInterrupt raised (a launcher whose signal handlers only set
        a flag, so no signal can land inside Popen and orphan a server whose pid was never returned)."""
        if not self.repository.is_dir():
            raise TritonError(f"model repository {self.repository} does not exist")
        self._backends = backend_directory(Path(tempfile.mkdtemp(prefix="adaudit-triton-backends-")))
        output = open(self.log_file, "ab") if self.log_file else None if self.show_output else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(self.command(), env=server_environment(), stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if self.log_file:
                output.close()  # the server holds its own copy of the descriptor
        try:
            self.wait_until_ready(interrupted)
        except BaseException:
            # Ctrl-C (or a SIGTERM turned into KeyboardInterrupt) while it loads: the server runs in its own
            # session, so the signal never reached it; stop it here, or it outlives its launcher
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        """host:port of the HTTP endpoint, what the gateway talks to by default (`grpc_url` for gRPC)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def url_for(self, protocol: str) -> str:
        return self.grpc_url if protocol == "grpc" else self.url

    def ready(self) -> bool:
        """Ready to serve, and its metrics and gRPC endpoints listening too: tritonserver may open them after its
        HTTP endpoint, so a scrape, or a gRPC client's first call, just after HTTP turned ready could be refused
        (and a refused gRPC channel then backs off for a while before it tries again)."""
        return self._answers(f"http://{self.host}:{self.http_port}/v2/health/ready") and \
            self._answers(f"http://{self.host}:{self.metrics_port}/metrics") and self._listens(self.grpc_port)

    def _listens(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1):
                return True
        except OSError:
            return False

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return answer.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_until_ready(self, interrupted: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if interrupted():
                raise KeyboardInterrupt  # start() stops the server
            if self.process.poll() is not None:
                self.stop()
                raise TritonError(f"tritonserver exited with code {self.process.returncode} before it was ready"
                                  + (f"; see {self.log_file}" if self.log_file else ""))
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise TritonError(f"tritonserver was not ready after {self.ready_timeout:.0f} s")

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the server and its model stubs (a crash, for fault tests); wait until every one of them
        is gone and remove the shared memory they mapped, so the same ports and repository can start again."""
        if self.process is None or self.process.poll() is not None:
            return
        session = self.process.pid
        regions = shared_memory_of(session)
        end_session(session, timeout)
        self.process.wait()
        self.stop()
        clean_shared_memory(regions)

    def stop(self) -> None:
        regions: set[str] = set()
        if self.process is not None and self.process.poll() is None:
            regions = shared_memory_of(self.process.pid)  # its own regions only: another server may be running
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the server and its stubs (its own session)
                self.process.wait()
        elif self.process is not None and session_alive(self.process.pid):
            # the server died by itself (a crash, a kill) but its model stubs outlived it: end them too
            regions = shared_memory_of(self.process.pid)
            end_session(self.process.pid)
        if self._backends is not None:
            shutil.rmtree(self._backends, ignore_errors=True)
            self._backends = None
        clean_shared_memory(regions)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
