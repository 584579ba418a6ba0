"""Production server: `python -m gateway_project.serve [--workers N] [-b HOST] [-p PORT]
[daphne's other options] [APP]`.

A small supervisor (no Django in it) opens the listening socket once and starts N workers
(`gateway_project.worker`: daphne on uvloop), each accepting on that same socket, so the kernel
hands every new connection to whichever worker is free. It restarts a worker that dies, and on
SIGTERM or SIGINT closes its own copy of the socket and forwards SIGTERM: each worker drains
(gateway_project.server_patches) within GATEWAY_SHUTDOWN_GRACE_S and exits; a worker still alive
10 s after that is killed. Every other option goes to daphne unchanged; APP defaults to
gateway_project.asgi:application. The socket is IPv4 TCP: daphne's `--fd` adopts AF_INET only.

Metrics: prometheus_client's multiprocess mode needs PROMETHEUS_MULTIPROC_DIR. Unless it is set,
the supervisor creates a fresh empty directory for this run (removed at exit), and marks a dead
worker's files so its live gauges stop counting. Its own lines are JSON with GATEWAY_LOG_FORMAT=json,
like the workers'.
"""

import argparse
import contextlib
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import FrameType

from ops.logs import JsonFormatter

from .server_patches import UnverifiedServer, check
from .worker import PARENT_ENV

logger = logging.getLogger("gateway_project.serve")

DEFAULT_APP = "gateway_project.asgi:application"
APP = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
QUICK_EXIT_S = 5.0  # a worker that dies sooner failed to start
GIVE_UP_AFTER = 5  # quick exits in a row: the workers cannot start, stop trying
KILL_AFTER_GRACE_S = 10.0
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m gateway_project.serve",
        allow_abbrev=False,
        description="N daphne workers on one socket; any other option is daphne's (python -m daphne --help).",
    )
    parser.add_argument("--workers", type=int, default=cores(), help="worker processes (default: the cores)")
    parser.add_argument("-b", "--bind", dest="host", default="127.0.0.1", help="address to bind to")
    parser.add_argument("-p", "--port", type=int, default=8000, help="port (0: any free one, logged)")
    parser.add_argument("-u", "--unix-socket", dest="unix_socket", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fd", dest="file_descriptor", default=None, help=argparse.SUPPRESS)
    parser.add_argument("-e", "--endpoint", dest="endpoint", default=None, help=argparse.SUPPRESS)
    args, passthrough = parser.parse_known_args(argv)
    if args.file_descriptor is not None or args.endpoint is not None or args.unix_socket is not None:
        parser.error("serve opens the listening socket itself: use -b/-p, not --fd, -e or -u")
    try:
        socket.inet_aton(args.host)
    except OSError:
        parser.error(f"-b {args.host}: serve listens on an IPv4 address (daphne's --fd adopts AF_INET only)")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not any(APP.fullmatch(arg) for arg in passthrough):
        passthrough.append(DEFAULT_APP)
    return args, passthrough


def listening_socket(args: argparse.Namespace) -> socket.socket:
    sock = socket.create_server((args.host, args.port), backlog=1024)
    sock.set_inheritable(True)
    logger.info("Listening on TCP address %s:%d (%d workers)", *sock.getsockname()[:2], args.workers)
    return sock


@dataclass
class Worker:
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, *, command: list[str], sock: socket.socket, workers: int, env: dict, grace: float) -> None:
        self.command, self.sock, self.size, self.env, self.grace = command, sock, workers, env, grace
        self.workers: list[Worker] = []
        self.stop_signal: int | None = None
        self.quick_exits = 0
        self.restart_at = 0.0

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop below
        while len(self.workers) < self.size:
            self._start()
        code = 0
        while self.stop_signal is None:
            select.select([wake_r], [], [], 1.0)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
            if self._reap() and self.quick_exits >= GIVE_UP_AFTER:
                logger.error("workers keep exiting at start (%d in a row): giving up", self.quick_exits)
                code = 1
                break
            while self.stop_signal is None and len(self.workers) < self.size and time.monotonic() >= self.restart_at:
                self._start()
        self._shutdown()
        return code

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signum

    def _start(self) -> None:
        # The command is this interpreter and the operator's own daphne options.
        process = subprocess.Popen(self.command, pass_fds=(self.sock.fileno(),), env=self.env)  # noqa: S603
        self.workers.append(Worker(process))

    def _reap(self) -> bool:
        """Drops the workers that exited; True when one did."""
        dead = [w for w in self.workers if w.process.poll() is not None]
        for worker in dead:
            self.workers.remove(worker)
            lived = time.monotonic() - worker.started
            mark_dead(worker.process.pid, self.env)
            if self.stop_signal is None:
                logger.error(
                    "worker %d exited (status %s) after %.1f s; starting another",
                    worker.process.pid,
                    worker.process.returncode,
                    lived,
                )
            self.quick_exits = self.quick_exits + 1 if lived < QUICK_EXIT_S else 0
            self.restart_at = time.monotonic() + (1.0 if lived < QUICK_EXIT_S else 0.0)
        return bool(dead)

    def _shutdown(self) -> None:
        self.sock.close()  # new connections are refused once the workers have closed theirs
        logger.info("shutting down %d workers (grace %.0f s)", len(self.workers), self.grace)
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + KILL_AFTER_GRACE_S
        for worker in self.workers:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("worker %d outlived the grace: killed", worker.process.pid)
                worker.process.kill()
                worker.process.wait()
            mark_dead(worker.process.pid, self.env)
        logger.info("all workers exited")


def mark_dead(pid: int, env: dict) -> None:
    """prometheus_client's clean-up for a dead process's live gauges (when metrics are installed)."""
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, env[METRICS_ENV])


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if os.environ.get("GATEWAY_LOG_FORMAT") == "json" else logging.Formatter(TEXT_LOG_FORMAT)
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    args, passthrough = parse(sys.argv[1:] if argv is None else argv)
    try:
        check(targets=False)  # versions only here; each worker checks the patched code too
    except UnverifiedServer as error:
        logger.error("refusing to start: %s", error)
        return 2
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    metrics_dir = None
    if not env.get(METRICS_ENV):
        metrics_dir = env[METRICS_ENV] = tempfile.mkdtemp(prefix="gateway-metrics-")
    sock = listening_socket(args)
    command = [sys.executable, "-m", "gateway_project.worker", "--fd", str(sock.fileno()), *passthrough]
    grace = float(os.environ.get("GATEWAY_SHUTDOWN_GRACE_S") or 30)
    try:
        return Supervisor(command=command, sock=sock, workers=args.workers, env=env, grace=grace).run()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
