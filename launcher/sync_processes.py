"""How the daemon starts sync processes: forked from a warm process, or as a fresh interpreter.

Every sync runs in a process of its own (``pipelines.run``), in its own process group, so
that it can be stopped at once and its memory is returned when it ends. Started fresh,
that process spends ~1.5 CPU-seconds importing Python, Beam and the client before its
first document, more than a 10k-document sync itself. With ``service.warm_sync_processes``
(the default) the daemon keeps one warm process (:mod:`pipelines.fork_server`) that
imported all of it once and forks a child per sync: the same process, in its own session,
without the start-up (see that module for what the warm process holds, and does not).

:class:`SyncProcesses` hides the difference: :meth:`SyncProcesses.start` returns a
``subprocess.Popen`` (fresh) or a :class:`WarmProcess` with the same ``pid``, ``poll()``,
``wait()`` and ``returncode``; both are stopped with ``os.killpg(process.pid, ...)``. When
the warm process cannot fork (not ready within ``ready_timeout``, gone, or refusing because
a thread runs in it) the sync starts fresh, and the warm process is started again later.

Example usage::

    processes = SyncProcesses(warm=True, preload=["sources.directory:DirectoryDataSource"])
    processes.start_warm()                     # at daemon start: imports in the background
    process = processes.start(["job.json", "result.json"], env=os.environ, cwd="/srv")
    process.wait()
    processes.close()
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["SyncProcesses", "WarmProcess", "process_env"]

_LOGGER = logging.getLogger(__name__)
#: What a returncode is when the warm process died before it could say how its child ended.
UNKNOWN_RETURNCODE = -1


def process_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a sync process (and of the warm process, whose children inherit its malloc)."""
    env = dict(base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # glibc gives each thread (bulk senders, scan slices) its own malloc arena, and
    # freed arenas stay resident: 2 arenas cut a 1M-document resync's peak by ~50 MB.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    # OpenBLAS starts a thread pool when numpy is imported; a sync does no linear algebra,
    # and a process that forks must have no thread.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


class WarmProcess:
    """A sync process forked by the warm process: what the daemon uses of ``subprocess.Popen``."""

    def __init__(self, pid: int, args: Sequence[str]):
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self._ended = threading.Event()
        self._orphaned = False

    def _set_ended(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
        self._ended.set()

    @property
    def orphaned(self) -> bool:
        """Whether the warm process died before this child: its ``returncode`` is then unknown."""
        return self._orphaned

    def _lost_parent(self) -> None:
        """The warm process died: nobody reports this child's end any more; watch its pid."""
        self._orphaned = True

    def poll(self) -> int | None:
        if self._orphaned and not self._ended.is_set() and not _alive(self.pid):
            self._set_ended(UNKNOWN_RETURNCODE)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
            step = 0.2 if self._orphaned else 1.0  # an orphan's end is seen by polling its pid
            self._ended.wait(step if left is None else min(step, left))
        return self.returncode  # type: ignore[return-value]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _ForkServer:
    """One warm process (``python -m pipelines.fork_server``) and the thread reading its messages."""

    def __init__(self, preload: Sequence[str], env: Mapping[str, str], cwd: str | None):
        ours, theirs = socket.socketpair()
        self.socket = ours
        command = [sys.executable, "-m", "pipelines.fork_server", "--control-fd", str(theirs.fileno())]
        for fqn in preload:
            command += ["--preload", fqn]
        try:
            self.process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), env=process_env(env), cwd=cwd,
                                            stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.ready = threading.Event()
        self.gone = threading.Event()
        self.info: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, dict[str, Any]] = {}
        self._children: dict[int, WarmProcess] = {}
        self._reader = threading.Thread(target=self._read, name="fork-server", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                data = self.socket.recv(65536)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._message(json.loads(line))
        except (OSError, ValueError) as exc:
            _LOGGER.debug("fork server channel: %s", exc)
        finally:
            self._lost()

    def _message(self, message: dict[str, Any]) -> None:
        if message.get("ready"):
            self.info = message
            _LOGGER.info("warm sync process ready (pid %s)", message.get("pid"))
            if message.get("failed"):
                _LOGGER.warning("warm sync process: could not import %s (their syncs will say why)",
                                "; ".join(f"{k} ({v})" for k, v in message["failed"].items()))
            self.ready.set()
        elif "exit" in message:
            with self._lock:
                child = self._children.pop(int(message["exit"]), None)
            if child is not None:
                child._set_ended(int(message["returncode"]))
        elif "id" in message:
            with self._lock:
                slot = self._pending.pop(int(message["id"]), None)
                if slot is not None and message.get("pid"):
                    # Registered here, on the reading thread, before the child's exit can be read.
                    child = WarmProcess(int(message["pid"]), slot["args"])
                    self._children[child.pid] = child
                    slot["process"] = child
                elif slot is not None:
                    slot["error"] = message.get("error") or "no answer"
            if slot is not None:
                slot["done"].set()

    def _lost(self) -> None:
        self.gone.set()
        self.ready.set()  # wake whoever waits for readiness: it will find the server gone
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
            children, self._children = list(self._children.values()), {}
        for slot in pending:
            slot["error"] = "the warm process is gone"
            slot["done"].set()
        for child in children:
            child._lost_parent()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None,
              timeout: float) -> WarmProcess | str:
        """A forked sync process, or why there is none."""
        if not self.ready.wait(timeout):
            return f"the warm process was not ready within {timeout:g}s"
        if self.gone.is_set():
            return "the warm process is gone"
        request_id = next(self._ids)
        slot: dict[str, Any] = {"done": threading.Event(), "args": list(argv)}
        with self._lock:
            self._pending[request_id] = slot
        line = json.dumps({"id": request_id, "argv": list(argv), "env": dict(env), "cwd": cwd}).encode() + b"\n"
        try:
            with self._send_lock:
                self.socket.sendall(line)
        except OSError as exc:
            with self._lock:
                self._pending.pop(request_id, None)
            return f"the warm process cannot be reached ({exc})"
        if not slot["done"].wait(30.0):
            with self._lock:
                self._pending.pop(request_id, None)
            return "the warm process did not answer within 30s"
        return slot.get("process") or slot.get("error") or "no answer"

    def close(self, timeout: float = 10.0) -> None:
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)


class SyncProcesses:
    """Starts sync processes (``pipelines.run JOB_FILE RESULT_FILE``), warm when it can."""

    def __init__(self, *, warm: bool = True, preload: Sequence[str] = (), ready_timeout: float = 120.0,
                 retry_after: float = 60.0):
        self.warm = warm
        self.preload = list(preload)
        self.ready_timeout = ready_timeout
        self.retry_after = retry_after
        self._server: _ForkServer | None = None
        self._failed_at = float("-inf")
        self._lock = threading.Lock()

    @property
    def warm_pid(self) -> int | None:
        """The warm process's pid (None: none running)."""
        server = self._server
        return server.process.pid if server is not None and not server.gone.is_set() else None

    def start_warm(self) -> None:
        """Start the warm process now (it imports in the background), unless disabled or running."""
        if not self.warm:
            return
        with self._lock:
            if self._server is not None and not self._server.gone.is_set():
                return
            if self._server is not None:
                self._server.close(timeout=1.0)
                self._server = None
            try:
                self._server = _ForkServer(self.preload, os.environ, os.getcwd())
            except OSError as exc:
                self._failed_at = time.monotonic()
                _LOGGER.warning("warm sync process: cannot start it (%s); syncs start cold", exc)

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None) -> Any:
        """A running sync process for ``argv``: forked warm when possible, else a fresh interpreter."""
        env = process_env(env)
        if self.warm:
            if self._server is None or (self._server.gone.is_set()
                                         and time.monotonic() - self._failed_at >= self.retry_after):
                self.start_warm()
            server = self._server
            if server is not None:
                started = server.spawn(argv, env, cwd, self.ready_timeout)
                if isinstance(started, WarmProcess):
                    return started
                if server.gone.is_set():
                    self._failed_at = time.monotonic()
                _LOGGER.warning("sync process started cold: %s", started)
        return subprocess.Popen([sys.executable, "-m", "pipelines.run", *argv], start_new_session=True, env=env,
                                cwd=cwd)

    def close(self) -> None:
        """Stop the warm process (its children are told to stop too)."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.close()
