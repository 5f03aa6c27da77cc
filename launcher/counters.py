"""A job's counters: what one run of it wrote, and the job's totals over its runs.

A job can run more than once: a ``suspended`` job (the daemon stopped) is claimed again
and its full sync starts over, skipping what the earlier run indexed. So the job document's
counters are cumulative: when a run ends (whatever its outcome) the document holds the
earlier runs' counters plus this run's (:meth:`Counters.carried` reads them back when the
job is claimed again). Where a run's counters come from:

* a run that reached its end (``completed``, or failed after the pipeline finished): Beam's
  committed metrics, exact (:meth:`Counters.of_outcome`);
* a run stopped early (canceled, suspended, failed mid-way, its job or connector deleted):
  the workers' progress records, written after every acknowledged ``_bulk`` and flushed
  by a sync process told to stop (:mod:`transforms.progress`), so exact up to the requests
  in flight; where every worker ran in the sync process, its own totals too
  (:meth:`Counters.at_least`: the larger of two lower bounds).

Example usage::

    job = Counters.carried(job_doc) + Counters.of_outcome(outcome)
    update_job(es, job_id, {**job.job_fields(), "metadata": job.metadata()})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Counters", "MIB"]

MIB = 1024 * 1024


def _count(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return max(0, number)


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class Counters:
    """Documents indexed (and their JSON bytes), deleted, dead-lettered, and ``_bulk`` retries."""

    indexed: int = 0
    bytes: int = 0
    deleted: int = 0
    dead_letters: int = 0
    bulk_retries: int = 0
    runs: int = 0

    def __add__(self, other: "Counters") -> "Counters":
        return Counters(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def at_least(self, other: "Counters") -> "Counters":
        """Field by field the larger: two lower bounds of the same counts give the better one."""
        return Counters(**{f.name: max(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})

    @classmethod
    def carried(cls, job: Mapping[str, Any]) -> "Counters":
        """The counters of the job's earlier runs, from its document.

        All 0 for a new job, and for one whose earlier runs were not ours (no
        ``metadata.runs``: Elastic's service, say, counts each run from zero).
        """
        metadata = _object(job.get("metadata"))
        if metadata.get("runs") is None:
            return cls()
        indexed_bytes = metadata.get("indexed_document_bytes")
        return cls(
            indexed=_count(job.get("indexed_document_count")),
            bytes=_count(indexed_bytes) if indexed_bytes is not None else _count(job.get("indexed_document_volume")) * MIB,
            deleted=_count(job.get("deleted_document_count")),
            dead_letters=_count(_object(metadata.get("dead_letters")).get("count")),
            bulk_retries=_count(metadata.get("bulk_retries")),
            runs=_count(metadata.get("runs")),
        )

    @classmethod
    def of_outcome(cls, outcome: Mapping[str, Any]) -> "Counters | None":
        """One run's exact counters from a sync process's result; None when it has none
        (the pipeline did not reach its end)."""
        if "indexed_document_count" not in outcome:
            return None
        return cls(indexed=_count(outcome.get("indexed_document_count")),
                   bytes=_count(outcome.get("indexed_document_bytes")),
                   deleted=_count(outcome.get("deleted_document_count")),
                   dead_letters=_count(_object(outcome.get("dead_letters")).get("count")),
                   bulk_retries=_count(outcome.get("bulk_retries")), runs=1)

    @classmethod
    def of_progress(cls, progress: Mapping[str, Any], *, dead_letters: int = 0) -> "Counters":
        """One run's counters from summed progress records (:func:`transforms.progress.read_progress`)."""
        return cls(indexed=_count(progress.get("indexed_document_count")),
                   bytes=_count(progress.get("indexed_document_bytes")),
                   deleted=_count(progress.get("deleted_document_count")), dead_letters=dead_letters, runs=1)

    def job_fields(self) -> dict[str, int]:
        """The job document's counter fields (``indexed_document_volume`` in MiB, rounded)."""
        return {"indexed_document_count": self.indexed, "indexed_document_volume": round(self.bytes / MIB),
                "deleted_document_count": self.deleted}

    def metadata(self, dead_letter_location: str | None = None) -> dict[str, Any]:
        """The job document's ``metadata`` fields these counters own."""
        dead: dict[str, Any] = {"count": self.dead_letters}
        if dead_letter_location:
            dead["location"] = dead_letter_location
        return {"indexed_document_bytes": self.bytes, "bulk_retries": self.bulk_retries, "runs": self.runs,
                "dead_letters": dead}
