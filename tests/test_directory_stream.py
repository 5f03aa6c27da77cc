"""The directory source's change stream (sources/directory_stream.py) on real folders, real inotify.

The daemon-level tests (snapshot, changes, cancel, restart with changes while down) are in
tests/test_continuous_sync_dir.py; here the stream is driven directly: the streaming contract
(:func:`sources.testing.check_change_stream`), what one file operation yields, debouncing,
rescans against an index, and an inotify queue overflow (the overflow event is injected: the
one small fake of these tests).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import EventsLostEvent

import sources.directory_stream as directory_stream
from sources.directory import DirectoryDataSource, file_id
from sources.directory_stream import DirChangeStream
from sources.errors import SourceError
from sources.testing import check_change_stream

pytestmark = pytest.mark.integration


def _source(root: Path, pattern: str = "**/*") -> DirectoryDataSource:
    return DirectoryDataSource({"directory": str(root), "pattern": pattern},
                               operator_settings={"allowed_roots": [str(root.parent)]})


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _drain(stream: DirChangeStream, until: Any, polls: int = 60) -> list[Any]:
    """Changes read until ``until(changes)`` holds (or ``polls`` reads of 0.5 s)."""
    out: list[Any] = []
    for _ in range(polls):
        out.extend(stream.changes(0.5))
        if until(out):
            break
    return out


def _by_path(changes: list[Any]) -> dict[str, Any]:
    """The last change of each document, keyed by path (deletes by ``-<id>``)."""
    out: dict[str, Any] = {}
    for change in changes:
        key = change.doc.get("path") or f"-{change.doc['_id']}"
        out[key] = change
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for i in range(4):
        _write(root / f"f{i}.txt", f"file {i}")
    _write(root / "sub" / "x.md", "# x")
    return root


def test_directory_stream_when_checked_against_the_contract_then_it_holds(folder):
    def make_changes() -> int:  # after the stream opened, before its snapshot is read
        _write(folder / "new.txt", "new")
        os.rename(folder / "f1.txt", folder / "sub" / "moved.txt")
        (folder / "deep" / "er").mkdir(parents=True)
        _write(folder / "deep" / "er" / "d.txt", "deep")
        return 3

    snapshot, changes = check_change_stream(DirectoryDataSource, {"directory": str(folder), "pattern": "**/*"},
                                            make_changes, operator_settings={"allowed_roots": [str(folder.parent)]})
    assert {doc["path"] for doc in snapshot} == {"f0.txt", "f2.txt", "f3.txt", "sub/x.md", "new.txt",
                                                "sub/moved.txt", "deep/er/d.txt"}
    assert {c.doc["path"] for c in changes if c.op == "index"} >= {"new.txt", "sub/moved.txt", "deep/er/d.txt"}


def _applied(snapshot: list[dict[str, Any]], changes: list[Any]) -> dict[str, dict[str, Any]]:
    """What an index holds after the snapshot and the changes (without content)."""
    held = {doc["_id"]: doc for doc in snapshot}
    for change in changes:
        if change.op == "delete":
            held.pop(change.doc["_id"], None)
        else:
            held[change.doc["_id"]] = change.doc
    return {doc_id: {k: v for k, v in doc.items() if k != "body"} for doc_id, doc in held.items()}


def test_directory_stream_when_files_change_then_documents_are_those_of_a_full_sync(folder):
    source = _source(folder)
    stream = source.open_change_stream(None)
    try:
        snapshot = list(stream.snapshot())
        _write(folder / "f0.txt", "changed")  # modified
        os.rename(folder / "f1.txt", folder / "sub" / "f1.txt")  # moved: a delete and an index
        (folder / "f2.txt").unlink()  # deleted
        _write(folder / "new" / "deeper" / "n.txt", "in a new folder")  # a new folder, watched at once
        os.rename(folder / "sub", folder / "renamed")  # a folder moved: its files' old paths go
        full = {doc["_id"]: doc for doc, _ in source.get_docs()}  # what a full sync lists now
        changes = _drain(stream, lambda out: _applied(snapshot, out) == full)
    finally:
        stream.close()
    assert _applied(snapshot, changes) == full
    last = _by_path(changes)
    assert last["f0.txt"].op == "index" and last["f0.txt"].doc["body"] == "changed"
    assert last["new/deeper/n.txt"].doc["body"] == "in a new folder"
    assert {f"-{file_id(p)}" for p in ("f1.txt", "f2.txt", "sub/x.md")} <= set(last)
    positions = [c.position for c in changes]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert min(positions) > stream.snapshot_position > 0


def test_directory_stream_when_an_editor_saves_or_a_file_is_written_in_parts_then_one_whole_read(folder, monkeypatch):
    stream = _source(folder).open_change_stream(None)
    try:
        list(stream.snapshot())
        monkeypatch.setattr(directory_stream, "QUIET_SECONDS", 3600.0)  # nothing is quiet yet
        with open(folder / "f3.txt", "w", encoding="utf-8") as handle:  # written in parts
            handle.write("first half, ")
            handle.flush()
            assert stream.changes(0.5) == []  # not read half-way
            handle.write("second half")
        _write(folder / ".f0.txt.swp", "saved by an editor")  # write a temporary file, rename it over
        os.replace(folder / ".f0.txt.swp", folder / "f0.txt")
        _write(folder / "brief.txt", "deleted before it is read")
        (folder / "brief.txt").unlink()
        assert stream.changes(0.5) == []
        monkeypatch.setattr(directory_stream, "QUIET_SECONDS", 0.0)
        changes = _drain(stream, lambda out: {"f0.txt", "f3.txt"} <= set(_by_path(out)))
    finally:
        stream.close()
    assert sorted((c.op, c.doc.get("path"), c.doc.get("body")) for c in changes) == [
        ("index", "f0.txt", "saved by an editor"), ("index", "f3.txt", "first half, second half")]


def test_directory_stream_when_inotify_overflows_then_a_rescan_finds_what_events_missed(folder):
    stream = _source(folder).open_change_stream(None)
    try:
        list(stream.snapshot())
        stream._observer.stop()  # from here on, events are lost
        stream._observer.join()
        _write(folder / "f0.txt", "a longer content than before")
        (folder / "f1.txt").unlink()
        _write(folder / "sub" / "late.txt", "late")
        assert stream.changes(0.5) == []
        directory_stream._Events(stream).dispatch(EventsLostEvent(str(folder)))  # IN_Q_OVERFLOW
        changes = stream.changes(2.0)
    finally:
        stream.close()
    assert sorted((c.op, c.doc.get("path") or c.doc["_id"]) for c in changes) == sorted(
        [("index", "f0.txt"), ("index", "sub/late.txt"), ("delete", file_id("f1.txt"))])
    assert stream.rescans == 1


def test_directory_stream_when_given_the_index_then_only_the_difference_is_written_above_its_versions(folder):
    source = _source(folder)
    listed = {doc["path"]: doc for doc, _ in source.get_docs()}
    stale = {**listed["f1.txt"], "size": 999}
    indexed = [listed["f0.txt"], stale, listed["sub/x.md"], {"path": "gone.txt", "_timestamp": "x", "size": 1}]
    highest = 2**60  # a version above the clock: positions must pass it

    def read_index(fields):
        assert set(fields) == {"path", "_timestamp", "size"}
        for number, doc in enumerate(indexed):
            yield file_id(doc["path"]), {k: doc[k] for k in fields}, highest - number

    stream = source.open_change_stream({"position": 5})
    try:
        stream.attach_index(read_index)
        assert stream.snapshot_position == 0 and list(stream.snapshot()) == []
        changes = stream.changes(1.0)
        stream.acknowledge(changes[-1].position)
        cursor = stream.cursor()
    finally:
        stream.close()
    assert sorted((c.op, c.doc.get("path") or c.doc["_id"]) for c in changes) == sorted(
        [("index", "f1.txt"), ("index", "f2.txt"), ("index", "f3.txt"), ("delete", file_id("gone.txt"))])
    assert min(c.position for c in changes) > highest
    assert cursor["position"] == changes[-1].position and cursor["folder"] == str(folder)


@pytest.mark.parametrize("pattern", ["**/*", "*", "**/*.txt", "sub/*", "**/sub/*.md", "*/x.*", "**/.*", "**"])
def test_directory_matches_when_any_pattern_then_selects_what_the_listing_selects(tmp_path, pattern):
    root = tmp_path / "tree"
    for relative in ("a.txt", ".hidden", "sub/x.md", "sub/y.txt", "sub/sub/z.md", "other/sub/w.md", "o/.h.txt"):
        _write(root / relative, "x")
    source = _source(root, pattern)
    listed = {relative for _, relative, _ in source._files(None)}
    every = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {relative for relative in every if source.matches(relative)} == listed


def test_directory_stream_when_the_index_matches_the_folder_then_a_rescan_writes_nothing(folder):
    source = _source(folder)
    listed = [doc for doc, _ in source.get_docs()]
    stream = source.open_change_stream(None)
    try:
        stream.attach_index(lambda fields: iter([(d["_id"], {k: d[k] for k in fields}, 7) for d in listed]))
        assert stream.changes(1.0) == []
        _write(folder / "f0.txt", "then one change")
        changes = _drain(stream, lambda out: bool(out))
    finally:
        stream.close()
    assert [(c.op, c.doc["path"], c.doc["body"]) for c in changes] == [("index", "f0.txt", "then one change")]


def test_directory_stream_when_a_file_is_larger_than_the_download_limit_then_its_metadata_only(folder):
    source = _source(folder)
    stream = source.open_change_stream(None)
    stream.max_download_bytes = 10  # as the service sets it (pipeline.max_download_bytes)
    try:
        list(stream.snapshot())
        _write(folder / "big.txt", "more than ten bytes")
        _write(folder / "small.txt", "small")
        changes = _drain(stream, lambda out: {"big.txt", "small.txt"} <= set(_by_path(out)))
    finally:
        stream.close()
    last = _by_path(changes)
    assert "body" not in last["big.txt"].doc and last["big.txt"].doc["size"] == 19
    assert last["small.txt"].doc["body"] == "small"


def _changes_until_error(stream: DirChangeStream) -> tuple[list[Any], Exception | None]:
    out: list[Any] = []
    for _ in range(20):
        try:
            out.extend(stream.changes(0.5))
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            return out, exc
    return out, None


@pytest.mark.parametrize("how", ["moved away", "re-created"])
def test_directory_stream_when_the_folder_itself_goes_then_the_stream_fails_without_deleting(folder, how):
    stream = _source(folder).open_change_stream(None)
    try:
        list(stream.snapshot())
        os.rename(folder, folder.parent / "elsewhere")
        if how == "re-created":  # a new folder at the same path: not the one watched
            _write(folder / "f0.txt", "another folder")
        changes, error = _changes_until_error(stream)
    finally:
        stream.close()
    assert [c for c in changes if c.op == "delete"] == []
    assert isinstance(error, SourceError)
    assert ("not a readable folder any more" if how == "moved away" else "replaced by another folder") in str(error)
