"""Where a job's dead letters are, and reading them back: what the daemon and the CLI need, without Beam.

:class:`~transforms.dead_letter.WriteDeadLetters` writes them (in the sync process) as Avro
files ``dead-letters-*.avro`` under ``<location>/<job_id>/``, a local folder or a URI
(``gs://...``). Local folders are read here with the standard library and fastavro, so the
daemon (which counts a stopped job's dead letters) and the CLI never import Beam for them;
only a URI goes through Beam's ``FileSystems``.

Example usage::

    folder = dead_letter_folder(dead_letter_location("./dead_letters"), "job-1")
    for letter in read_dead_letters_from(folder):
        print(letter["doc_id"], letter["error_message"])
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from typing import Any

import fastavro

__all__ = ["DEAD_LETTER_SCHEMA", "dead_letter_location", "dead_letter_folder", "read_dead_letters",
           "read_dead_letters_from", "count_dead_letters"]

DEAD_LETTER_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "DeadLetter",
        "namespace": "elastic_ingest",
        "fields": [
            {"name": "doc_id", "type": ["null", "string"]},
            {"name": "operation", "type": "string"},
            {"name": "stage", "type": "string"},
            {"name": "error_type", "type": "string"},
            {"name": "error_message", "type": "string"},
            {"name": "document", "type": ["null", "string"]},
            {"name": "job_id", "type": ["null", "string"]},
            {"name": "timestamp", "type": "double"},
        ],
    }
)
_PATTERN = "dead-letters-*.avro"


def dead_letter_location(location: str) -> str:
    """``pipeline.dead_letters`` as a job records it: a URI (``gs://...``) as is, a local
    folder made absolute (relative to the working directory), so it is found from anywhere."""
    if "://" in location:
        return location
    return os.path.abspath(os.path.expanduser(location))


def dead_letter_folder(location: str, job_id: str) -> str:
    """Where the dead letters of ``job_id`` go: ``<location>/<job_id>`` (as Beam's ``FileSystems.join``)."""
    if "://" in location:
        return location.rstrip("/") + "/" + job_id
    return os.path.join(location, job_id)


def read_dead_letters(location: str, job_id: str) -> Iterator[dict[str, Any]]:
    """Every dead letter a job wrote under ``location`` (``pipeline.dead_letters``), oldest file first."""
    return read_dead_letters_from(dead_letter_folder(location, job_id))


def read_dead_letters_from(folder: str) -> Iterator[dict[str, Any]]:
    """Every dead letter in ``folder`` (a job's, as its ``metadata.dead_letters.location`` says)."""
    if "://" in folder:
        yield from _read_remote(folder)
        return
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), _PATTERN))):
        with open(path, "rb") as stream:
            yield from fastavro.reader(stream)


def _read_remote(folder: str) -> Iterator[dict[str, Any]]:
    from apache_beam.io.filesystems import FileSystems  # gs:// and the like: Beam's filesystems

    pattern = FileSystems.join(folder, _PATTERN)
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001 - no folder means no dead letters
        return
    for meta in sorted(matches, key=lambda m: m.path):
        with FileSystems.open(meta.path) as stream:
            yield from fastavro.reader(stream)


def count_dead_letters(folder: str) -> int | None:
    """How many dead letters ``folder`` holds (None: it cannot be read)."""
    try:
        return sum(1 for _ in read_dead_letters_from(folder))
    except Exception:  # noqa: BLE001 - unreadable: unknown, not zero
        return None
