"""DigestCache: an index's digests kept between syncs, used while nobody else writes to it.

A full sync must know what its content index holds (``ScanIndex``: every ``_id`` and
``_timestamp``). Reading the whole index for that on every sync is most of a no-change
resync's time, and load on Elasticsearch. The cache keeps, per content index, digests
that are known to equal the index's content at one :class:`IndexState`, and a sync uses
them instead of a scan when the index is still at that state.

What "the index did not change" means is Elasticsearch's business, not a clock's:
:func:`index_state` reads each concrete index's UUID and, for every primary shard, its
history UUID and highest sequence number. Every write (index, update, delete, by
anybody) takes a new sequence number; a restored or recreated index has new UUIDs. A
state is only used when it is settled: every primary's local and global checkpoints
equal its highest sequence number (every operation is applied and cannot be rolled back).

Digests get into the cache two ways:

* **a scan** during which the state did not move (read before the scan, the index then
  refreshed, read again after it): the scan read exactly that state;
* **a completed sync** (:func:`store_synced`): when it dead-lettered nothing, the index
  must now hold exactly what the source yielded, whose digests the read recorded
  (``ReadFromSource(record_digests=...)``). They are kept only if Elasticsearch agrees:
  every write was applied as sent (no ingest pipeline, the connector's or the index's
  default or final one, dropped a document, rerouted it to another index or changed its
  id: the ``_bulk`` answer says so per item), the same UUIDs, exactly as many new
  sequence numbers as the writes Elasticsearch says it applied (any write by someone
  else, or a retried request applied twice, breaks the equality), and as many documents
  in the index as distinct digests. The digests are those of what the sync sent: a
  pipeline that rewrites ``_timestamp`` itself makes the next scan see other
  timestamps, which only decides which documents are sent again, never what is deleted.

So after a first sync, the next no-change resync reads only the source.

Entries are hard links of the digests' two files (copies across file systems) and a
``state.json``, one entry per index name: storing a new one removes the older, any entry
unused for ``MAX_IDLE_DAYS``, and the least recently used entries while the cache is
over ``max_bytes`` (``pipeline.digest_cache_max_bytes``). A sync links the entry into a
fresh directory of its own before using it, so removing an entry never pulls files from
under a running sync. No file is ever written in place: digests and ``state.json`` are
written under temporary names, made read-only and renamed into place, so a file a sync
has mapped (the same inode as a cache entry's) never changes; a lookup that fails
midway leaves nothing behind, and the scan that follows writes into a fresh directory.
A cache that cannot be read or written is skipped with a warning; the sync then scans.
It never fails a sync.

Example::

    cache = DigestCache("~/.cache/elastic-ingest/index-digests")
    state = index_state(es, "search-docs")
    digests = cache.lookup("search-docs", state, into="/tmp/sync-1/digests") if state else None
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transforms.content_index import count_documents
from transforms.digests import DIGEST_FILES, IndexDigests, IndexDigestsWriter, read_records

__all__ = ["DigestCache", "IndexState", "index_state", "default_cache_dir", "write_state", "read_state",
           "started_from", "store_synced", "INDEX_DIGESTS_PREFIX", "MAX_IDLE_DAYS", "DEFAULT_MAX_BYTES"]

_LOGGER = logging.getLogger(__name__)
#: Part of every key: a release that digests ids or timestamps differently starts afresh.
_FORMAT = "xxh3-64/iso-utc/1"
STATE_FILE = "state.json"
#: The directories a sync's digests of its index are kept in, under its work directory.
INDEX_DIGESTS_PREFIX = "index-digests-"
#: An entry neither stored nor used for this long (its index deleted, its connector gone) is removed.
MAX_IDLE_DAYS = 30
#: The cache's size limit unless ``pipeline.digest_cache_max_bytes`` says (16 bytes per indexed document).
DEFAULT_MAX_BYTES = 4 * 1024**3
#: Records read, and held before a spill to the bucket files, when the read's digests are sorted
#: (1 MiB): keeping a 1M-document index's digests no longer adds to the sync's peak (it added
#: ~60 MB with 16 MiB at a time; measured, RSS sampled every 50 ms).
_CHUNK = 1 << 16


@dataclass(frozen=True)
class IndexState:
    """Where an index's writes stand (see the module docstring)."""

    #: Changes with every write to the index.
    key: str
    #: The indices' and shards' UUIDs: the same as long as only documents change.
    identity: str
    #: Sequence numbers used so far, all primary shards together.
    operations: int


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/elastic-ingest/index-digests`` (``~/.cache/...`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "elastic-ingest", "index-digests")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def index_state(es: Any, index: str) -> IndexState | None:
    """Where the writes to ``index`` (an index, alias or pattern) stand.

    None when it cannot be known: the index is missing, the credentials lack the
    ``monitor`` privilege, or some primary has operations in flight.
    """
    try:
        stats = es.indices.stats(
            index=index, level="shards", metric="docs",
            filter_path="_shards,indices.*.uuid,indices.*.shards.*.routing.primary,indices.*.shards.*.seq_no,"
                        "indices.*.shards.*.commit.user_data.history_uuid")
    except Exception as exc:  # noqa: BLE001 - no state: the index is scanned
        _LOGGER.debug("no write state for %s: %s", index, exc)
        return None
    body = getattr(stats, "body", stats)  # elasticsearch-py's response object, or a dict
    indices = body.get("indices") if isinstance(body, dict) else None
    if not isinstance(indices, dict) or not indices:
        return None
    if (body.get("_shards") or {}).get("failed"):
        return None  # a shard copy failed to answer: its writes are unknown
    identity: list[Any] = [_FORMAT]
    positions: list[Any] = []
    operations = 0
    for name in sorted(indices):
        entry = indices[name]
        shards = entry.get("shards") if isinstance(entry, dict) else None
        if not isinstance(shards, dict) or not entry.get("uuid"):
            return None
        histories = []
        for number, copies in sorted(shards.items(), key=lambda item: int(item[0])):
            primary = [c for c in copies or () if (c.get("routing") or {}).get("primary")]
            if len(primary) != 1:
                return None  # a primary being relocated or not started: unknown
            seq = primary[0].get("seq_no") or {}
            history = ((primary[0].get("commit") or {}).get("user_data") or {}).get("history_uuid")
            top = seq.get("max_seq_no")
            if not isinstance(top, int) or history is None or \
                    not (seq.get("local_checkpoint") == top == seq.get("global_checkpoint")):
                return None
            histories.append([int(number), history])
            positions.append(top)
            operations += top + 1
        identity.append([name, entry["uuid"], histories])
    return IndexState(key=_digest([identity, positions]), identity=_digest(identity), operations=operations)


def write_state(directory: str | os.PathLike[str], index: str, state: IndexState, count: int) -> None:
    """Record in a digests directory that its digests are ``index``'s content at ``state``.

    Written under a temporary name and renamed into place: a ``state.json`` already there
    (a hard link to a cache entry's) is replaced, never written to.
    """
    temporary = Path(directory, f".{STATE_FILE}.{uuid.uuid4().hex[:12]}.tmp")
    with open(temporary, "x", encoding="utf-8") as out:
        json.dump({"index": index, "count": count, **asdict(state)}, out)
    os.chmod(temporary, 0o444)
    os.replace(temporary, Path(directory, STATE_FILE))


def read_state(directory: str | os.PathLike[str]) -> tuple[str, IndexState, int] | None:
    """``(index, state, count)`` recorded by :func:`write_state`; None when there is none (or it is damaged)."""
    try:
        meta = json.loads(Path(directory, STATE_FILE).read_text(encoding="utf-8"))
        return (str(meta["index"]), IndexState(str(meta["key"]), str(meta["identity"]), int(meta["operations"])),
                int(meta["count"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def started_from(work_dir: str | os.PathLike[str]) -> IndexState | None:
    """The state of the index digests a sync used (its scan's or the cache's), from its work directory.

    None when there were none at a known state, or more than one state (a retried scan).
    """
    states = {read_state(path) for path in Path(work_dir).glob(f"{INDEX_DIGESTS_PREFIX}*")}
    if len(states) != 1 or None in states:
        return None
    return next(iter(states))[1]  # type: ignore[index]


def _index_key(index: str) -> str:
    return hashlib.sha256(index.encode()).hexdigest()[:24]


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copyfile(source, target)


class DigestCache:
    """Index digests kept in ``root`` between syncs, one entry per index name, ``max_bytes`` in all.

    Every file of an entry is published whole (written under another name, then renamed)
    and never written again: entries are replaced, not updated. When storing an entry
    takes the cache over ``max_bytes``, the least recently used entries go first (an
    entry larger than the limit on its own is not kept).
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 1:
            raise ValueError(f"DigestCache: max_bytes must be positive, got {max_bytes}")
        self.root = Path(os.path.expanduser(root))
        self.max_bytes = max_bytes

    def _entry(self, index: str, state: IndexState) -> Path:
        return self.root / f"{_index_key(index)}-{state.key[:32]}"

    def lookup(self, index: str, state: IndexState, into: str | os.PathLike[str]) -> IndexDigests | None:
        """The digests stored for ``index`` at ``state``, linked into the new directory ``into``; None when none are.

        ``into`` appears whole or not at all: the files are linked into a directory of
        its own, renamed to ``into`` once complete. On failure nothing is left there.
        """
        entry = self._entry(index, state)
        if not (entry / STATE_FILE).exists():
            return None
        target = Path(into)
        staging = target.parent / f".lookup-{uuid.uuid4().hex}"
        try:
            recorded = read_state(entry)
            if recorded is None:
                raise ValueError(f"no readable {STATE_FILE}")
            name, at, count = recorded
            if name != index or at != state:
                return None
            sizes = [(entry / file).stat().st_size for file in DIGEST_FILES]
            if sizes != [8 * count] * len(DIGEST_FILES):
                raise ValueError(f"files of {sizes} bytes for {count} digests")
            staging.mkdir(parents=True, mode=0o700)
            for file in (*DIGEST_FILES, STATE_FILE):
                _link_or_copy(entry / file, staging / file)
            os.rename(staging, target)  # fails if ``into`` exists: nothing is ever linked over
            os.utime(entry / STATE_FILE)  # in use: the last to be pruned
        except (OSError, ValueError) as exc:
            _LOGGER.warning("index digests cache: entry %s unusable (%s); scanning the index", entry, exc)
            shutil.rmtree(staging, ignore_errors=True)  # our own links only: the entry's files are untouched
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return IndexDigests(count=count, directory=str(target))

    def holds(self, index: str, state: IndexState) -> bool:
        """Whether an entry for ``index`` at ``state`` is stored."""
        recorded = read_state(self._entry(index, state))
        return recorded is not None and recorded[:2] == (index, state)

    def store(self, index: str, state: IndexState, digests: IndexDigests) -> bool:
        """Keep ``digests`` (written to files) as ``index`` at ``state``; drop older entries. True if kept."""
        if digests.directory is None:
            return False
        size = 8 * digests.count * len(DIGEST_FILES)
        if size > self.max_bytes:
            _LOGGER.info("index digests cache %s: %s's digests (%d bytes) exceed pipeline.digest_cache_max_bytes "
                         "(%d); not kept", self.root, index, size, self.max_bytes)
            return False
        entry = self._entry(index, state)
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            staging.mkdir(parents=True, mode=0o700)
            for file in DIGEST_FILES:
                _link_or_copy(Path(digests.directory) / file, staging / file)
            write_state(staging, index, state, digests.count)
            try:
                os.rename(staging, entry)
            except OSError:  # the same entry exists already (another sync stored it)
                shutil.rmtree(staging, ignore_errors=True)
        except OSError as exc:
            _LOGGER.warning("index digests cache %s: cannot store %s (%s); the next sync scans it",
                            self.root, index, exc.strerror or exc)
            shutil.rmtree(staging, ignore_errors=True)
            return False
        self._prune(keep=entry, index_prefix=f"{_index_key(index)}-")
        return True

    def _prune(self, *, keep: Path, index_prefix: str) -> None:
        """Remove the index's older entries, entries idle for MAX_IDLE_DAYS, then the least recently
        used ones until the cache holds at most ``max_bytes``."""
        idle_since = time.time() - MAX_IDLE_DAYS * 86400
        remaining: list[tuple[float, int, Path]] = []
        for other in self.root.iterdir():
            if other == keep:
                continue
            used = _last_used(other)
            if other.name.startswith(index_prefix) or used < idle_since:
                shutil.rmtree(other, ignore_errors=True)
            elif not other.name.startswith("."):  # another sync's staging is not counted, nor removed
                remaining.append((used, _size(other), other))
        total = _size(keep) + sum(size for _, size, _ in remaining)
        for _, size, other in sorted(remaining, key=lambda item: item[0]):
            if total <= self.max_bytes:
                break
            _LOGGER.info("index digests cache %s: over pipeline.digest_cache_max_bytes (%d); removing %s",
                         self.root, self.max_bytes, other.name)
            shutil.rmtree(other, ignore_errors=True)
            total -= size


def _size(entry: Path) -> int:
    try:
        return sum(file.stat().st_size for file in entry.iterdir())
    except OSError:
        return 0


def _last_used(entry: Path) -> float:
    try:
        return (entry / STATE_FILE).stat().st_mtime
    except OSError:
        return 0.0 if not entry.name.startswith(".staging-") else time.time()  # another sync's staging


def store_synced(cache: DigestCache, es: Any, index: str, *, before: IndexState, records: list[Path],
                 work_dir: str | os.PathLike[str], writes: int, not_as_sent: int = 0) -> bool:
    """After a completed sync that dead-lettered nothing, keep what its read recorded as the index's digests.

    ``before``: the state the sync's digests of the index were taken at (or the empty
    index's); ``records``: the read's record files (:func:`~transforms.digests.read_records`);
    ``writes``: the sync's writes that Elasticsearch applied to the index (each took a
    sequence number); ``not_as_sent``: writes it acknowledged but did not apply as sent
    (an ingest pipeline, named by the sync or the index's default or final pipeline,
    dropped the document, rerouted it or changed its id). True if stored.
    """
    if not_as_sent:
        _LOGGER.info("index %s: %d document(s) were dropped, rerouted or given another id by an ingest pipeline: "
                     "its digests are not kept; the next sync scans it", index, not_as_sent)
        return False
    after = index_state(es, index)
    if after is not None and after == before and cache.holds(index, after):
        return True  # nothing written, and the digests the sync started from are kept already
    if after is None or after.identity != before.identity or after.operations - before.operations != writes:
        _LOGGER.info("index %s: written by others during the sync (or a request applied twice): its digests "
                     "are not kept; the next sync scans it", index)
        return False
    writer = IndexDigestsWriter(Path(work_dir) / f"synced-digests-{uuid.uuid4().hex}", spill_records=_CHUNK)
    try:
        for path in records:
            for chunk in read_records(path, _CHUNK):
                writer.add(chunk["id"], chunk["stamp"])
    except BaseException:
        writer.abort()
        raise
    digests = writer.finish()
    if writer.duplicates:
        _LOGGER.info("index %s: the source yielded an id more than once; its digests are not kept", index)
        return False
    count = count_documents(es, index)
    if count != digests.count or index_state(es, index) != after:
        _LOGGER.info("index %s: %d documents but %d distinct ids read; its digests are not kept", index, count,
                     digests.count)
        return False
    return cache.store(index, after, digests)
