"""`robustwrap serve`: a real Triton Inference Server (PyPI's nvidia-pytriton build) on a model repository,
supervised: a model whose stub died is reloaded."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from .common import console, fail


def serve_command(
    repository: Path = typer.Argument(..., help="a Triton model repository (robustwrap export --triton-repo DIR "
                                      "--triton-backend python writes one this server can run)"),
    host: str = typer.Option("127.0.0.1", help="address to bind HTTP, gRPC and metrics to (0.0.0.0 exposes the "
                             "server to the network)"),
    http_port: int = typer.Option(8000, min=0, max=65535, help="HTTP port (0: any free port)"),
    grpc_port: int = typer.Option(8001, min=0, max=65535, help="gRPC port (0: any free port)"),
    metrics_port: Optional[int] = typer.Option(None, min=0, max=65535, help="serve Triton's Prometheus metrics "
                                               "at http://HOST:PORT/metrics (default: off; 0: any free port)"),
    timeout: float = typer.Option(300.0, min=1.0, help="seconds to wait for every model to load"),
    log_file: Optional[Path] = typer.Option(None, help="write the server's log here (default: a temporary file, "
                                            "whose end is shown if the server fails)"),
) -> None:
    """Serve a model repository with Triton until Ctrl-C or SIGTERM (needs the `serve` extra)."""
    try:
        from robustwrap.export.optional import require
        from robustwrap.export.triton import TritonServer, check_servable
        from robustwrap.export.triton.repository import served_by

        require("pytriton", "serve")  # the extra first: nothing else can help without it
        check_servable(repository)
        server = TritonServer(repository, host=host, http_port=http_port, grpc_port=grpc_port,
                              metrics_port=metrics_port, log_file=log_file)
    except (ImportError, ValueError) as error:
        fail(str(error))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    problem = None
    try:
        with console.status(f"starting tritonserver on {repository} (loading the models)..."):
            server.start(timeout=timeout)
        metrics = f", metrics {server.metrics_url}" if server.metrics_url else ""
        console.print(f"serving {repository} at [bold]{server.url}[/bold] (gRPC {server.host}:{server.grpc_port}"
                      f"{metrics})", soft_wrap=True)
        for model in server.models():
            served = served_by(repository / str(model.get("name")))
            console.print(f"  {model.get('name')} v{model.get('version', '?')}: {model.get('state', '?')}"
                          + (f" ({served})" if served else ""), soft_wrap=True)
        console.print("Ctrl-C or SIGTERM stops the server and its models; a model whose stub dies is reloaded")
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                problem = f"tritonserver stopped on its own:\n{server.log_tail()}"
                break
            for model, seconds, failure in server.heal():
                console.print(f"  {model}: a stub died; reloaded in {seconds:.1f} s (not ready meanwhile)"
                              if failure is None else f"  {model}: a stub died and it did not load again "
                              f"({failure}); it stays unloaded (not ready), the other models serve on",
                              soft_wrap=True)
    except (ImportError, ValueError, RuntimeError, OSError) as error:
        problem = str(error)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if problem:
        fail(problem)
    console.print("stopped")
