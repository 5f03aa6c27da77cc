"""Benchmarks of elastic-ingest against Elasticsearch's own ceiling (see docs/benchmarks.md).

Run ``scripts/bench`` (or ``python -m bench --help``).
"""
