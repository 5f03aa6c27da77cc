"""Merge benchmark runs into one report: ``python -m bench.merge RUN.json [RUN.json ...]``.

Each scenario keeps the ceiling measured in its own run, so scenarios from runs made with
the same settings on the same cluster can share one table and one chart. Writes
``latest.json``, ``latest.md`` and ``latest.png`` (``--name`` to change the stem).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.report import annotate, chart, markdown
from bench.run import REPO, evaluate_targets

__all__ = ["merge", "main"]


def merge(runs: list[dict]) -> dict:
    first = runs[0]
    merged = {**first, "merged_from": [r["started_at"] for r in runs]}
    merged["started_at"] = " + ".join(r["started_at"] for r in runs)
    merged["machine"] = {**first["machine"],
                         "loadavg_start": "; ".join(str(r["machine"].get("loadavg_start")) for r in runs)}
    settings = {r["pipeline_settings"] for r in runs}
    if len(settings) > 1:
        raise SystemExit(f"runs with different pipeline settings cannot be merged: {settings}")
    seen = {}
    for run in runs:  # a later run's scenario replaces an earlier one of the same size
        for scenario in run["scenarios"]:
            seen[(scenario["doc_size"], scenario["count"])] = scenario
        for key in ("partitions", "tuning"):
            if run.get(key):
                merged[key] = run[key]
    merged["scenarios"] = [seen[k] for k in sorted(seen)]
    annotate(merged)
    merged["targets"] = evaluate_targets(merged)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.merge")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--name", default="latest")
    args = parser.parse_args(argv)
    merged = merge([json.loads(Path(p).read_text()) for p in args.runs])
    out = Path(args.out)
    (out / f"{args.name}.json").write_text(json.dumps(merged, indent=2, default=str))
    md = markdown(merged)
    (out / f"{args.name}.md").write_text(md)
    chart(merged, out / f"{args.name}.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
