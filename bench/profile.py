"""Profile one sync process with pyinstrument: where does a sync's time go?

Runs ``python -m pipelines.run JOB_FILE RESULT_FILE`` (exactly what the daemon starts)
under ``pyinstrument`` for a synthetic source. By default the pipeline runs in one
process (``direct_running_mode=in_memory``, one worker) so that the profile sees every
stage; ``--mode multi_processing`` profiles only the runner side.

Example usage::

    python -m bench.profile --count 100000                 # first sync into a fresh index
    python -m bench.profile --count 100000 --resync        # profile the no-change resync
    python -m bench.profile --count 100000 --set bulk.max_docs=2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.ours import REPO, SOURCE_FQN
from bench.run import DEFAULT_PIPELINE, _dotted, _merge, parse_count

__all__ = ["main"]


def _sync(job_file: Path, result_file: Path, profile_to: Path | None, profiler: str = "pyinstrument") -> dict:
    command = [sys.executable]
    if profile_to is not None and profiler == "pyinstrument":
        command += ["-m", "pyinstrument", "-r", "text", "-o", str(profile_to)]
    elif profile_to is not None and profiler == "tracemalloc":  # the Python heap at its largest
        command = [sys.executable, "-m", "bench.trace_memory", str(job_file), str(result_file), str(profile_to)]
    elif profile_to is not None:  # every thread, while it holds the GIL (the Python work), as collapsed stacks
        py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")  # the bench extra's, beside python
        command = [py_spy if os.path.exists(py_spy) else "py-spy", "record", "-r", "400", "-f", "raw", "--nonblocking", "--threads", "--gil",
                   "-o", str(profile_to.with_suffix(".collapsed")), "--", sys.executable]
    if profiler != "tracemalloc" or profile_to is None:
        command += ["-m", "pipelines.run", str(job_file), str(result_file)]
    if os.environ.get("BENCH_PROFILE_WRAP"):  # a wrapper script instead of -m pipelines.run (experiments)
        command = [sys.executable, os.environ["BENCH_PROFILE_WRAP"], str(job_file), str(result_file)]
    started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {"MALLOC_ARENA_MAX": "2", **os.environ, "ELASTIC_INGEST_LOG_LEVEL": "WARNING"}  # as the daemon starts it
    subprocess.run(command, cwd=REPO, check=False, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    outcome = json.loads(result_file.read_text())
    outcome["wall_seconds"] = round(time.monotonic() - started, 2)
    outcome["cpu_seconds"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    outcome["cpu_system_seconds"] = round(after.ru_stime - before.ru_stime, 2)  # in the kernel (syscalls)
    outcome["max_rss_mb_so_far"] = round(after.ru_maxrss / 1024, 1)  # the largest child yet (Linux: KiB)
    return outcome


def summarize_collapsed(collapsed: str, top: int = 45) -> str:
    """py-spy's collapsed stacks (``frame;frame;... count`` per line) -> the functions with the
    most samples: self (the frame itself on CPU) and total (anywhere on the stack), in percent."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")").split(":")[0]
                  for f in stack.split(";")[1:]]  # the thread's name first
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    lines = [f"{samples} samples of a thread holding the GIL", "", "self %  function"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in sorted(total.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from pipelines.job import SyncJob
    from pipelines.run import write_job_file
    from pipelines.settings import PipelineConfig
    from transforms.es_client import ElasticsearchConnection

    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--es-url", default=os.environ.get("ES_URL", "http://127.0.0.1:9210"))
    parser.add_argument("--count", default="100k")
    parser.add_argument("--doc-size", type=int, default=1024)
    parser.add_argument("--dir", action="store_true",
                        help="the dir source on a folder of --count files of --doc-size bytes (bench.directory's)")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--mode", default="in_memory", choices=["in_memory", "multi_threading", "multi_processing"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--resync", action="store_true", help="sync once unprofiled, then profile the resync")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--profiler", choices=["pyinstrument", "py-spy", "tracemalloc"], default="pyinstrument",
                        help="py-spy: every thread's samples while it holds the GIL (Beam's, the bulk threads'), "
                             "summarized by function; tracemalloc: the Python heap's allocation sites at its largest")
    parser.add_argument("--no-profile", action="store_true", help="time only (CPU seconds, peak RSS), no pyinstrument")
    parser.add_argument("--index", help="sync into this index and keep it (default: a fresh one, deleted after)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)

    count = parse_count(args.count)
    settings = _merge(DEFAULT_PIPELINE, {"direct_running_mode": args.mode, "direct_num_workers": args.workers})
    settings = _merge(settings, _dotted(args.set or []))
    workdir = Path(tempfile.mkdtemp(prefix="elastic-ingest-profile-"))
    settings["dead_letters"] = str(workdir / "dead_letters")
    index = args.index or f"bench-profile-{uuid.uuid4().hex[:6]}"
    conn = ElasticsearchConnection(hosts=(args.es_url,), request_timeout=600)
    es = conn.client()
    config = {"count": count, "doc_size": args.doc_size, "seed": 1, "partitions": args.partitions, "version": 0}
    service_type, fqn, source_settings = "synthetic", SOURCE_FQN, {}
    if args.dir:
        from bench.directory import DIR_FQN, write_folder

        folder = workdir / "files"
        write_folder(folder, count=count, size=args.doc_size)
        service_type, fqn, source_settings = "dir", DIR_FQN, {"allowed_roots": [str(folder)]}
        config = {"directory": str(folder)}
    flags = {"_extract_binary_content": True, "_reduce_whitespace": True, "_run_ml_inference": True}
    name = f"profile-{'resync' if args.resync else 'full'}-{service_type}-{count}-{args.mode}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        outcomes = []
        for run in range(2 if args.resync else 1):
            job = SyncJob(job_id=f"profile-{uuid.uuid4().hex[:8]}", connector_id="bench-profile", job_type="full",
                          index_name=index, service_type=service_type, source_fqn=fqn,
                          configuration={k: {"value": v} for k, v in config.items()}, pipeline_flags=flags,
                          source_settings=source_settings)
            job_file, result_file = workdir / "job.json", workdir / "result.json"
            write_job_file(job_file, job, PipelineConfig.model_validate(settings), conn, progress_interval=5.0)
            last = run == (1 if args.resync else 0)
            profile_to = out / f"{name}.txt" if last and not args.no_profile else None
            outcomes.append(_sync(job_file, result_file, profile_to, args.profiler))
            if profile_to is not None and args.profiler == "py-spy":
                collapsed = profile_to.with_suffix(".collapsed")
                profile_to.write_text(summarize_collapsed(collapsed.read_text()))
        summary = {"count": count, "settings": settings, "outcomes": outcomes}
        (out / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str))
        print(json.dumps(summary, indent=2, default=str))
        print(f"profile: {out / (name + '.txt')}", file=sys.stderr)
    finally:
        if not args.index:
            es.indices.delete(index=index, ignore_unavailable=True)
        es.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
