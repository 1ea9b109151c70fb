"""Run ``mlflow models serve`` for a registered model on 127.0.0.1 as a child process (tests, benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cpst_pipeline

PROJECT_ROOT = Path(cpst_pipeline.__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def model_server(model_uri: str, tracking_uri: str | None, log_path: Path, startup_timeout_s: float = 300) -> Iterator[str]:
    """Yield the server's base URL once ``/ping`` answers; stop the server (its whole process group) after.

    No virtualenv is activated: PATH holds only this interpreter's folder (where uvicorn is),
    and PYTHONPATH this checkout, as ``make serve`` does."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    if tracking_uri:  # for models:/ URIs; a local model folder needs none
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for_ping(server, url, log_path, startup_timeout_s)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def _wait_for_ping(server: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"model server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"model server did not answer /ping within {timeout_s:.0f} s")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)


def post_invocations(url: str, payload: dict, timeout_s: float = 300) -> tuple[int, bytes]:
    """(HTTP status, body) of a POST to ``/invocations``; error statuses are returned, not raised."""
    request = urllib.request.Request(url + "/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
