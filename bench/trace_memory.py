"""Where a sync's memory is at its peak: ``python -m bench.trace_memory JOB_FILE RESULT_FILE OUT``.

Runs ``pipelines.run`` (what the daemon starts) in this process under :mod:`tracemalloc`,
snapshots the Python heap every 0.25 s, keeps the largest, and writes its top allocation
sites (with their callers) to ``OUT``. ``python -m bench.profile --profiler tracemalloc``
calls it. Python allocations only: what C libraries allocate outside Python's allocator
does not show.
"""

from __future__ import annotations

import runpy
import sys
import threading
import time
import tracemalloc

__all__ = ["main"]


def main(argv: list[str]) -> int:
    job_file, result_file, out = argv
    tracemalloc.start(6)
    largest: list = [0, None]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.25):
            current, _ = tracemalloc.get_traced_memory()
            if current > largest[0]:
                largest[:] = [current, tracemalloc.take_snapshot()]

    threading.Thread(target=watch, daemon=True, name="trace-memory").start()
    sys.argv = ["pipelines.run", job_file, result_file]
    try:
        runpy.run_module("pipelines.run", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        done.set()
    size, snapshot = largest
    lines = [f"largest traced Python heap: {size / 2**20:.1f} MiB", ""]
    if snapshot is not None:
        for stat in snapshot.statistics("traceback")[:25]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB in {stat.count} blocks")
            lines += [f"           {frame.filename}:{frame.lineno}" for frame in stat.traceback[-4:]]
    with open(out, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
