"""A Beam worker pool for EXTERNAL environments: ``python -m pipelines.worker_pool --service_port PORT``.

``scripts/prism start`` runs it beside Prism; a runner given ``--environment_type=EXTERNAL
--environment_config=localhost:PORT`` asks it for one SDK worker process per job
environment, and the job's DoFns run there, outside the sync process. It is Beam's own
pool (``apache_beam.runners.worker.worker_pool_main``) with three fixes:

* workers run with this interpreter (Beam's pool starts ``python`` from ``PATH``, which
  may be a Python without this project installed);
* a worker's standard output goes to the pool's standard error, its log (Beam's pool
  pipes it and never reads the pipe: a worker that printed 64 KB would block);
* exited workers are reaped (Beam's pool waits only for workers the runner stops; Prism
  lets them exit, which left one defunct process per job).

Workers log to standard error (the pool's log), one line per record, tagged with the
worker id Prism gave.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["main"]

_LOGGER = logging.getLogger("pipelines.worker_pool")


def _reap_forever(interval: float = 1.0) -> None:
    """Wait for every exited child. Beam's Popen objects then see ECHILD and take the worker as ended."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no child at all
            pid = 0
        if pid == 0:
            time.sleep(interval)


def _refuse_a_taken_port(port: int) -> None:
    """Exit if ``port`` is taken: gRPC binds with SO_REUSEPORT, so a second pool would silently share it."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("::", port))
        except OSError as exc:
            raise SystemExit(f"worker pool: port {port} is taken ({exc.strerror})") from None


def _worker_command(directory: str) -> str:
    """An executable that starts one SDK worker with this interpreter, stdout sent to stderr."""
    path = Path(directory) / "sdk-worker"
    path.write_text(
        "#!/bin/sh\n"
        f"exec {shlex.quote(sys.executable)} -m pipelines.worker_pool --worker \"$@\" 1>&2\n",
        encoding="utf-8",
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def _run_worker(argv: list[str]) -> None:
    """One SDK worker, given the arguments of Beam's container contract (``--id``, ``--control_endpoint``...)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", required=True)
    parser.add_argument("--control_endpoint", required=True)
    args, _ = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s worker {args.id} %(name)s: %(message)s")
    for noisy in ("elastic_transport", "urllib3", "botocore", "google"):  # one line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from apache_beam.runners.worker.sdk_worker import SdkHarness

    SdkHarness(args.control_endpoint, worker_id=args.id).run()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        _run_worker(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m pipelines.worker_pool")
    parser.add_argument("--service_port", type=int, required=True, help="the pool's port on this machine")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer

    _refuse_a_taken_port(args.service_port)
    threading.Thread(target=_reap_forever, name="reaper", daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="elastic-ingest-worker-pool-") as directory:
        address, server = BeamFnExternalWorkerPoolServicer.start(
            use_process=True, port=args.service_port, container_executable=_worker_command(directory))
        _LOGGER.info("worker pool at %s; workers run %s", address, sys.executable)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through `finally`: temp dir removed
        try:
            server.wait_for_termination()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
