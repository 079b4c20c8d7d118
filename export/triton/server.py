"""A real Triton Inference Server on a model repository: PyPI's ``nvidia-pytriton`` build.

``nvidia-pytriton`` ships ``tritonserver`` (2.51 for 0.7.0) with the Python backend only. To
serve from it, :class:`TritonServer` lays out a runtime folder (``backends/python`` holding the
backend library and the stub built for this interpreter's Python version, by symbolic link),
puts this interpreter's ``bin`` folder first on ``PATH`` (the stub runs the first ``python`` it
finds there, so it sees the same torch, robustwrap and numpy as the caller), sets
``LD_LIBRARY_PATH`` to the wheel's bundled libraries and starts the server in its own process
group, bound to 127.0.0.1 unless told otherwise. :meth:`stop` ends the whole group (server and
stubs), first with SIGTERM, then SIGKILL after a bounded wait.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from ..optional import require
from .environment import numpy_problem

logger = logging.getLogger(__name__)


def _pytriton_root() -> Path:
    pytriton = require("pytriton", "serve")
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise RuntimeError(f"{root} has no bin/tritonserver: the nvidia-pytriton install is incomplete; "
                           "pip install --force-reinstall 'robustwrap[serve]'")
    return root


class TritonServer:
    """``tritonserver`` from ``nvidia-pytriton`` serving ``repository``, as a context manager.

    Args:
        repository: a Triton model repository (e.g. written by :func:`write_triton_bundle`).
        host: the address HTTP and gRPC bind to (127.0.0.1: this machine only).
        http_port, grpc_port: the ports (0: a free port chosen at start).
        log_file: where the server's output goes (default: a file in the runtime folder;
            :attr:`log` reads it).
        extra_args: more ``tritonserver`` arguments.

    Example:
        >>> with TritonServer("serving/") as server:
        ...     print(server.url, server.models())
    """

    def __init__(self, repository: str | os.PathLike, *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, log_file: str | os.PathLike | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ValueError(f"{repository} is not a folder: pass a Triton model repository "
                             "(robustwrap export --triton-repo DIR writes one)")
        for name, port in (("http_port", http_port), ("grpc_port", grpc_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"{name} must be an integer in [0, 65535], got {port!r}")
        self.host = host
        self.http_port, self.grpc_port = http_port or _free_port(host), grpc_port or _free_port(host)
        self.extra_args = list(extra_args)
        self.runtime = Path(tempfile.mkdtemp(prefix="robustwrap-triton-"))
        self.log_path = Path(log_file) if log_file else self.runtime / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The HTTP endpoint, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{self.host}:{self.http_port}"

    def start(self, timeout: float = 120.0) -> "TritonServer":
        """Start the server and wait until it is ready (every model loaded).

        Raises:
            ImportError: the ``serve`` extra is missing.
            RuntimeError: the server exited or was not ready within ``timeout`` seconds (with
                the end of its log, which names a model that failed to load).
        """
        problem = numpy_problem()
        if problem:
            raise RuntimeError(problem)
        root = _pytriton_root()
        backend = self.runtime / "backends" / "python"
        backend.mkdir(parents=True, exist_ok=True)
        stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
            "triton_python_backend_stub"
        if not stub.is_file():
            raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python "
                               f"{sys.version_info.major}.{sys.version_info.minor} ({stub})")
        for source in [stub, *(root / "backends" / "python").iterdir()]:
            if source.is_file() and not (backend / source.name).exists():
                (backend / source.name).symlink_to(source)
        environment = dict(os.environ)
        environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
        libraries = root.parent.parent / "nvidia_pytriton.libs"
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libraries), environment.get("LD_LIBRARY_PATH", "")) if p)
        command = [str(root / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                   f"--backend-directory={self.runtime / 'backends'}",
                   f"--cache-directory={root / 'caches'}", f"--http-address={self.host}",
                   f"--http-port={self.http_port}", f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                   "--allow-metrics=false", "--allow-sagemaker=false", "--allow-vertex-ai=false",
                   "--exit-on-error=true", "--strict-readiness=true", *self.extra_args]
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                            start_new_session=True)
        finally:
            log.close()
        logger.info("started tritonserver (pid %d) on %s for %s", self.process.pid, self.url, self.repository)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode} before it was ready:\n"
                                   f"{tail}")
            if self._ready():
                return self
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"tritonserver was not ready after {timeout:.0f} s:\n{tail}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def models(self) -> list[dict]:
        """The repository index: each model's name, version and state."""
        request = urllib.request.Request(f"{self.url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """End the server and every stub it started (its process group); bounded waits."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if process is not None:
            try:  # stubs left in the group after the server exited
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(self.runtime, ignore_errors=True)  # read log_tail() before stop() to keep the log's end

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
