"""A real Triton Inference Server on a model repository: PyPI's ``nvidia-pytriton`` build.

``nvidia-pytriton`` ships ``tritonserver`` (2.51 for 0.7.0) with the Python backend only. To
serve from it, :class:`TritonServer` lays out a runtime folder (``backends/python`` holding the
backend library and the stub built for this interpreter's Python version, by symbolic link),
puts this interpreter's ``bin`` folder first on ``PATH`` (the stub runs the first ``python`` it
finds there, so it sees the same torch, robustwrap and numpy as the caller), sets
``LD_LIBRARY_PATH`` to the wheel's bundled libraries and starts the server in its own process
group, bound to 127.0.0.1 unless told otherwise. :meth:`stop` ends the whole group (server and
stubs), first with SIGTERM, then SIGKILL after a bounded wait, and removes the stubs' shared
memory (named with a prefix of this server's own). The server gets SIGKILL when the process that
started it dies, however it dies (Linux's parent-death signal), so no server outlives its caller.

Models load under explicit model control, so :meth:`heal` can bring back a model whose Python
backend stub died (a crash, an out-of-memory kill): Triton's Python backend never restarts one, and
every later request to it fails while the model still reports ready. ``heal`` unloads the model
(it reports not ready from then on) and loads it again.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import shutil
import socket
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from robustwrap.outputs import process_alive

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
        metrics_port: serve Triton's Prometheus metrics at ``http://host:metrics_port/metrics``
            (None: metrics off; 0: a free port).
        extra_args: more ``tritonserver`` arguments.

    Example:
        >>> with TritonServer("serving/") as server:
        ...     print(server.url, server.models())
    """

    def __init__(self, repository: str | os.PathLike, *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, log_file: str | os.PathLike | None = None,
                 metrics_port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ValueError(f"{repository} is not a folder: pass a Triton model repository "
                             "(robustwrap export --triton-repo DIR writes one)")
        ports = (("http_port", http_port), ("grpc_port", grpc_port))
        for name, port in (*ports, *((("metrics_port", metrics_port),) if metrics_port is not None else ())):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"{name} must be an integer in [0, 65535], got {port!r}")
        self.host = host
        self.http_port, self.grpc_port = http_port or _free_port(host), grpc_port or _free_port(host)
        self.metrics_port = None if metrics_port is None else (metrics_port or _free_port(host))
        self.shm_prefix = f"robustwrap_{os.getpid()}_{secrets.token_hex(4)}_"  # this server's stubs' /dev/shm files
        self._stubs: dict[str, set[int]] = {}
        self.extra_args = list(extra_args)
        self.runtime = Path(tempfile.mkdtemp(prefix="robustwrap-triton-"))
        self.log_path = Path(log_file) if log_file else self.runtime / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The HTTP endpoint, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str | None:
        """The Prometheus endpoint, e.g. ``http://127.0.0.1:8002/metrics`` (None: metrics off)."""
        return None if self.metrics_port is None else f"http://{self.host}:{self.metrics_port}/metrics"

    def start(self, timeout: float = 120.0) -> "TritonServer":
        """Start the server and wait until it is ready (every model loaded).

        Raises:
            ImportError: the ``serve`` extra is missing.
            ValueError: a port is in use on the host.
            RuntimeError: the server exited or was not ready within ``timeout`` seconds (with
                the end of its log, which names a model that failed to load).
        """
        for flag, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port),
                           ("--metrics-port", self.metrics_port)):
            if port is not None and not _port_free(self.host, port):
                raise ValueError(f"port {port} on {self.host} is in use (another server?): choose another {flag}, "
                                 "or 0 for a free one")
        problem = numpy_problem()
        if problem:
            raise RuntimeError(problem)
        _tidy_shared_memory()
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
                   *self._metrics_args(), "--allow-sagemaker=false", "--allow-vertex-ai=false",
                   "--model-control-mode=explicit", "--load-model=*",
                   f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                   "--exit-on-error=true", "--strict-readiness=true", *self.extra_args]
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                            start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()
        logger.info("started tritonserver (pid %d) on %s for %s", self.process.pid, self.url, self.repository)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"tritonserver exited with code {code} before it was ready:\n{tail}")
            if self._ready():
                self._stubs = self._find_stubs()
                return self
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"tritonserver was not ready after {timeout:.0f} s:\n{tail}")

    def _metrics_args(self) -> list[str]:
        if self.metrics_port is None:
            return ["--allow-metrics=false"]
        return ["--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]

    def _find_stubs(self) -> dict[str, set[int]]:
        """Each model's live Python backend stubs (the server's children running ``<repo>/<model>/1/model.py``)."""
        stubs: dict[str, set[int]] = {}
        if self.process is None:
            return stubs
        children = []
        for task in Path(f"/proc/{self.process.pid}/task").glob("*"):  # every thread's: Triton forks from several
            try:
                children += (task / "children").read_text().split()
            except OSError:
                continue
        for child in children:
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) > 1 and argv[0].endswith(b"triton_python_backend_stub") and process_alive(int(child)):
                stubs.setdefault(Path(os.fsdecode(argv[1])).parent.parent.name, set()).add(int(child))
        return stubs

    def heal(self, timeout: float = 120.0) -> list[tuple[str, float, str | None]]:
        """Reload every READY model one of whose stubs has died since the last look.

        The model is unloaded first (from then on it, and the server with strict readiness, report not
        ready), then loaded again. A model an operator unloaded is left alone; one that does not load
        again stays unloaded (not ready) and is reported, and the others go on serving.

        Returns:
            (model, seconds, None) for each model reloaded, (model, seconds, why) for each that failed.
        """
        if self.process is None or self.process.poll() is not None:
            return []
        current = self._find_stubs()
        broken = [model for model, pids in self._stubs.items() if not pids <= current.get(model, set())]
        if not broken:
            for model, pids in current.items():
                self._stubs.setdefault(model, pids)  # models loaded since the last look
            return []
        try:
            ready = {entry.get("name") for entry in self.models() if entry.get("state") == "READY"}
        except (urllib.error.URLError, OSError, ValueError):
            return []  # the server is going away: poll() says so next time
        healed = []
        for model in broken:
            old = self._stubs.pop(model)
            if model not in ready:  # unloaded on purpose (or failing to load): not ours to bring back
                continue
            start = time.monotonic()
            logger.warning("a stub of model %s died: reloading it", model)
            try:
                self._control(model, "unload", timeout)
                self._control(model, "load", timeout)
            except urllib.error.HTTPError as error:
                healed.append((model, time.monotonic() - start, _http_reason(error)))
                continue
            except (urllib.error.URLError, OSError) as error:
                healed.append((model, time.monotonic() - start, str(error)))
                continue
            healed.append((model, time.monotonic() - start, None))
            fresh = self._find_stubs().get(model, set()) - old  # the old instances' stubs may still be exiting
            if fresh:
                self._stubs[model] = fresh
        for model, pids in self._find_stubs().items():
            self._stubs.setdefault(model, pids)  # models loaded since the last look
        return healed

    def _control(self, model: str, action: str, timeout: float) -> None:
        request = urllib.request.Request(f"{self.url}/v2/repository/models/{model}/{action}", data=b"{}",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()

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
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):  # a killed stub leaves its region behind
            try:
                region.unlink()
            except OSError:
                pass

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_reason(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read() or b"{}")
    except (ValueError, OSError):
        body = {}
    return f"HTTP {error.code}: {body.get('error', error.reason)}"


try:  # looked up here, not in the forked child (no dlopen between fork and exec)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing).

    Linux sends it when the *thread* that started the server exits: start the server from a thread that
    lives as long as it (the main thread, as ``robustwrap serve`` does).
    """
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _tidy_shared_memory() -> None:
    """Remove the /dev/shm regions of robustwrap servers whose process is gone (one killed with SIGKILL)."""
    for region in Path("/dev/shm").glob("robustwrap_*_*_*"):
        owner = region.name.split("_")[1]
        if owner.isdigit() and not process_alive(int(owner)):
            try:
                region.unlink()
            except OSError:
                pass


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a TIME_WAIT port is free
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
