"""Run the API locally: in a thread of this process, or as child processes.

Light to import (no HTTP client, server or settings until used): ``gridsweep run`` starts its
workers from here before anything heavy is imported.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.cli.lifeline import child_lifeline

if TYPE_CHECKING:
    from app.config import Settings


def local_threads(workers: int) -> int:
    """CPU threads for each of ``workers`` local workers (`run`, `up`): the usable cores shared
    out, at least one. A fused CPU pack trains in that many parts (one torch thread each; a
    trial trained alone on one). More threads than cores only spin: on 2 cores `gridsweep run
    examples/moons.yaml --pack-size 1` took 160 s with 2 torch threads per worker beside the
    in-process API's, 27 s with 1 (when the one-by-one path still used torch threads)."""
    try:
        cores = len(os.sched_getaffinity(0))  # what this process may run on (cgroups, taskset)
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(
    url: str,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    interval: float = 0.1,
    stop: threading.Event | None = None,
) -> bool:
    """Wait for ``GET /healthz`` to answer 200 (or the server process to die), asking every
    ``interval`` s; False if ``stop`` was set first."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            return False
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"server at {url} not healthy after {timeout}s")


class ThreadServer:
    """uvicorn in a daemon thread (``gridsweep run``): same HTTP path, no extra process."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        from app.api import create_app  # here: client-only commands need not import the API
        from app.api.slow_clients import server_config

        self.host, self.port = host, port or free_port(host)
        config = server_config(
            create_app(settings),
            settings,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        # uvicorn says when it listens (lifespan done): no health poll at 0.1 s steps.
        deadline = time.monotonic() + 30.0
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self.server.started:
            raise RuntimeError(f"the in-process API at {self.url} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def gridsweep_cmd(*args: str) -> list[str]:
    """The command line that runs a gridsweep subcommand with this interpreter."""
    return [sys.executable, "-m", "app.cli", *args]


def spawn(
    args: Sequence[str], env: dict[str, str] | None = None, pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    """A child in a process group of its own: a terminal's Ctrl-C reaches only the parent,
    which stops its children in order (``stop_all``). It holds a lifeline to this process
    (``app.cli.lifeline``): it stops itself if this process is killed before it could."""
    lifeline, lifeline_env = child_lifeline()
    try:
        return subprocess.Popen(
            list(args),
            env={**os.environ, **(env or {}), **lifeline_env},
            process_group=0,
            pass_fds=(*pass_fds, lifeline),
        )
    finally:
        os.close(lifeline)  # the child holds its copy


def spawn_worker(
    args: Sequence[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """A ``gridsweep worker`` child (``args``: its options) that writes one line on a pipe once it
    has started: ``ready`` (imported, its device checked) or ``error: ...``. Returns the child and
    the pipe's read end, for ``worker_started``."""
    read, write = os.pipe()
    try:
        proc = spawn(gridsweep_cmd("worker", *args, "--ready-fd", str(write)), env=env, pass_fds=(write,))
    finally:
        os.close(write)  # the child holds its copy: the pipe ends when the child writes or exits
    return proc, read


def worker_started(proc: subprocess.Popen[bytes], read_fd: int) -> str | None:
    """Wait until the worker of ``spawn_worker`` has started; None, or why it could not (the
    caller closes ``read_fd``)."""
    with os.fdopen(read_fd, "rb", closefd=False) as pipe:
        line = pipe.readline().decode(errors="replace").strip()
    if line == "ready":
        return None
    code = proc.wait()
    return line.removeprefix("error: ") if line else f"the worker exited with code {code} as it started"


def stop_all(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM every child (workers release their trials), then SIGKILL stragglers."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stop_on_signals() -> None:
    """``kill`` and a closed terminal (SIGTERM, SIGHUP) stop a local command the way Ctrl-C
    does (raise ``KeyboardInterrupt``), so it stops its children instead of orphaning them.
    A signal that is ignored (``nohup``) stays ignored."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _interrupt)


def ignore_signals() -> None:
    """Ignore Ctrl-C, SIGTERM and SIGHUP from here on: while the children stop and release
    their trials, a second Ctrl-C must not cut that short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt
