"""The warm sync process: Python, Beam, the pipeline code and the sources imported once, forked per sync.

A cold sync process spends ~1.5 CPU-seconds, and on a busy 2-core host several seconds,
importing Python, Beam and Elasticsearch's client before it reads its first document; at
10k documents that is most of the sync. The daemon therefore keeps one of these servers
(``python -m pipelines.fork_server``, started by :mod:`launcher.sync_processes`): it
imports everything a sync needs, then waits. For each sync it forks a child that runs
``pipelines.run`` exactly as ``python -m pipelines.run JOB_FILE RESULT_FILE`` would:

* the child is a process of its own, in its own session and process group: the daemon
  stops it with a signal to its group, and its memory goes back when it exits; the pages
  it shares with the server (the imported code, ~130 MB) are shared copy-on-write, so a
  sync costs what it allocates;
* the server holds no job state: it never reads a job file (the child does), has no
  client, event loop or thread (checked before every fork: a fork copies locks held by
  other threads; with a thread running it refuses and the daemon starts that sync cold),
  and its imported objects are frozen out of the garbage collector (``gc.freeze``) so a
  child's collections do not touch, and copy, them;
* the child takes the environment the daemon gives it, and exits like an interpreter
  (non-daemon threads joined, ``atexit`` handlers run) with the sync's exit code.

Protocol, JSON lines on the socket the daemon passes as ``--control-fd``::

    server -> daemon  {"ready": true, "pid": 123, "preloaded": [...], "failed": {...}}
    daemon -> server  {"id": 7, "argv": ["job.json", "result.json"], "env": {...}, "cwd": "/srv"}
    server -> daemon  {"id": 7, "pid": 456}          or  {"id": 7, "error": "why it cannot fork"}
    server -> daemon  {"exit": 456, "returncode": 0}  (Popen's convention: -N for signal N)

When the daemon goes away (the socket closes) or the server is told to stop (SIGTERM),
its children are sent SIGTERM and the server exits; a child whose server died stops by
itself too (:func:`pipelines.run.main` watches its parent).

Example usage (what the daemon does, see launcher/sync_processes.py)::

    python -m pipelines.fork_server --control-fd 5 --preload sources.directory:DirectoryDataSource
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
import threading
import traceback
from typing import Any

__all__ = ["main", "preload", "thread_count", "PRELOAD"]

#: Beam modules a run imports lazily (the portable runner and its worker): imported up front.
PRELOAD = (
    "pipelines.run",
    "apache_beam.runners.portability.fn_api_runner",
    "apache_beam.runners.portability.fn_api_runner.fn_runner",
    "apache_beam.runners.portability.fn_api_runner.worker_handlers",
    "apache_beam.runners.worker.sdk_worker",
    "apache_beam.runners.worker.bundle_processor",
    "apache_beam.runners.worker.operations",
    "apache_beam.runners.worker.statecache",
    "apache_beam.runners.portability.portable_metrics",
)


def thread_count() -> int:
    """Threads of this process as the kernel sees them (native ones included), else Python's count."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def preload(sources: list[str]) -> tuple[list[str], dict[str, str]]:
    """Import what every sync needs and the configured sources' modules; (imported, failed: why)."""
    import importlib

    from transforms.lean_imports import BEAM_EXTRAS, without_extras

    with without_extras(BEAM_EXTRAS):  # pyarrow would start a thread (jemalloc's) and cost ~27 MB
        for name in PRELOAD:
            importlib.import_module(name)
    from sources.registry import load_source_class

    done, failed = list(PRELOAD), {}
    for fqn in sources:
        try:
            load_source_class(fqn)
            done.append(fqn)
        except Exception as exc:  # noqa: BLE001 - the sync of that source reports it, cold
            failed[fqn] = f"{type(exc).__name__}: {exc}"
    return done, failed


class _Server:
    def __init__(self, control: socket.socket):
        self.control = control
        self.children: set[int] = set()
        self.buffer = b""
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.control.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # the daemon is gone: the loop sees the socket close

    # -- the loop --------------------------------------------------------------------
    def serve(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up fd does the work
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle
        signal.set_wakeup_fd(self.wake_w)
        self.stopping = False
        self.selector = selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ)
        selector.register(self.wake_r, selectors.EVENT_READ)
        while not self.stopping:
            for key, _ in selector.select():
                if key.fileobj is self.control:
                    self._read()
                else:
                    self._woken()
            self._reap()
        for pid in list(self.children):
            self._signal(pid, signal.SIGTERM)

    def _woken(self) -> None:
        try:
            signals = os.read(self.wake_r, 512)
        except BlockingIOError:
            return
        if signal.SIGTERM in signals:
            self.stopping = True

    def _read(self) -> None:
        try:
            data = self.control.recv(65536)
        except OSError:
            data = b""
        if not data:  # the daemon is gone
            self.stopping = True
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                self._request(json.loads(line))

    def _request(self, request: dict[str, Any]) -> None:
        threads = thread_count()
        if threads > 1:
            self.send({"id": request.get("id"), "error": f"the warm process has {threads} threads; forking it "
                                                          "could copy a lock another thread holds"})
            return
        try:
            pid = os.fork()
        except OSError as exc:
            self.send({"id": request.get("id"), "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            self._child(request)  # never returns
        self.children.add(pid)
        self.send({"id": request.get("id"), "pid": pid})

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.send({"exit": pid, "returncode": os.waitstatus_to_exitcode(status)})

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    # -- the child -------------------------------------------------------------------
    def _child(self, request: dict[str, Any]) -> None:
        code = 1
        try:
            os.setsid()  # its own session and process group, as the daemon's cold start gives it
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            self.selector.close()
            self.control.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            os.environ.clear()
            os.environ.update({str(k): str(v) for k, v in (request.get("env") or {}).items()})
            from pipelines.job import DAEMON_PID_ENV
            from pipelines.run import main

            # The process the sync watches (it stops when that one dies) is its parent, this server.
            os.environ[DAEMON_PID_ENV] = str(os.getppid())
            tempfile.tempdir = None  # found again from this sync's TMPDIR, not the server's
            if request.get("cwd"):
                os.chdir(request["cwd"])
            argv = [str(arg) for arg in request.get("argv") or []]
            sys.argv = ["pipelines.run", *argv]
            code = main(argv)  # the imported objects stay frozen: collecting them would copy their pages
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the server
            traceback.print_exc()
            code = 1
        finally:
            # As an interpreter exits (and as multiprocessing's forked children do): join the
            # non-daemon threads, run atexit handlers, flush, then leave without unwinding.
            try:
                threading._shutdown()  # type: ignore[attr-defined]
                import atexit

                atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.fork_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--control-fd", type=int, required=True, help="the socket to the daemon")
    parser.add_argument("--preload", action="append", default=[], metavar="FQN", help="a source class to import")
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    done, failed = preload(args.preload)
    gc.collect()
    gc.freeze()  # what was imported is never collected: children's collections leave its pages shared
    server = _Server(control)
    server.send({"ready": True, "pid": os.getpid(), "preloaded": done, "failed": failed,
                 "threads": thread_count()})
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
