"""docs/sources/<type>.md against the code: a page per built-in source that cannot drift.

* The fields table and the features list of each page are generated from the class
  (:mod:`sources.schema`); the test fails when they differ. Regenerate them with::

      .venv/bin/python -m tests.test_source_docs

* Each page's example (``<!-- example -->``, a ``bash`` block) is run as a user would run
  it, against the source's test server and a real daemon: the ``create-connector`` and
  ``sync --wait`` commands exactly as written, but for the connector id, the index and the
  one field that names where the data is (the folder, table, collection or bucket), which
  get names of the test's own. The indexed document must have the fields of the page's
  ``<!-- document -->`` example (the pipeline flags every document gets included, with
  their values), and no others.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from sources.registry import load_source_class
from sources.schema import describe_fields, features_markdown, fields_markdown
from tests.helpers import REPO, SOURCES, DaemonProcess, cli, index_docs, skip_or_fail, source_entry, write_config

DOCS = REPO / "docs" / "sources"
_GENERATED = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end generated -->)", re.S)
#: The field of each source that names where its data is: the test points it at data of its own.
WHERE = {"dir": "directory", "postgresql": "tables", "mysql": "tables", "mongodb": "collection",
         "s3": "buckets", "google_cloud_storage": "buckets", "azure_blob_storage": "containers",
         "redis": "database", "network_drive": "drive_path"}
#: Fields the service adds to every document from the connector's pipeline settings.
PIPELINE_FLAGS = {"_extract_binary_content", "_reduce_whitespace", "_run_ml_inference"}


def page(service_type: str) -> Path:
    return DOCS / f"{service_type}.md"


def render(text: str, cls: type) -> str:
    """``text`` with its generated parts made from ``cls``."""
    generated = {"fields": fields_markdown(cls), "features": features_markdown(cls)}
    return _GENERATED.sub(lambda m: m.group(1) + generated[m.group(2)] + "\n" + m.group(4), text)


def _block_after(text: str, marker: str, language: str) -> str:
    start = text.index(marker)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match, f"no ```{language} block after {marker}"
    return match.group(1)


def example_commands(service_type: str) -> list[list[str]]:
    """The page's example: each ``elastic-ingest`` command as its arguments (after the program name)."""
    block = _block_after(page(service_type).read_text(encoding="utf-8"), "<!-- example", "bash")
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "elastic-ingest":
            commands.append(words[1:])
    return commands


def example_settings(command: list[str]) -> dict[str, str]:
    return dict(command[i + 1].split("=", 1) for i, word in enumerate(command) if word in ("--set", "--set-env"))


def documented_document(service_type: str) -> dict[str, Any]:
    return json.loads(_block_after(page(service_type).read_text(encoding="utf-8"), "<!-- document -->", "json"))


# -- the pages and the schemas -------------------------------------------------------------
@pytest.mark.parametrize("service_type", sorted(SOURCES))
def test_source_docs_when_compared_with_the_class_then_fields_and_features_match(service_type):
    cls = load_source_class(source_entry(service_type)[0])
    text = page(service_type).read_text(encoding="utf-8")

    assert {m.group(2) for m in _GENERATED.finditer(text)} == {"fields", "features"}
    fqn = source_entry(service_type)[0]
    assert render(text, cls) == text, (f"docs/sources/{service_type}.md is out of date with {fqn}: "
                                       "run .venv/bin/python -m tests.test_source_docs")
    assert f"`{fqn}`" in text


@pytest.mark.parametrize("service_type", sorted(SOURCES))
def test_source_docs_when_example_read_then_it_gives_every_required_field_and_only_real_ones(service_type):
    fields = {f.name: f for f in describe_fields(load_source_class(source_entry(service_type)[0]))}
    create, sync = example_commands(service_type)
    given = example_settings(create)

    assert create[:2] == ["--action", "create-connector"] and sync[:2] == ["--action", "sync"]
    assert create[create.index("--service-type") + 1] == service_type
    assert set(given) <= set(fields), set(given) - set(fields)
    assert {name for name, f in fields.items() if f.must_be_given} <= set(given)
    assert WHERE[service_type] in given


def test_source_docs_when_listed_then_every_built_in_source_has_a_page_linked_from_readme():
    assert {p.stem for p in DOCS.glob("*.md")} == set(SOURCES)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert all(f"docs/sources/{service_type}.md" in readme for service_type in SOURCES)


# -- the examples, end to end --------------------------------------------------------------
def _where_dir(tmp_path: Path) -> Iterator[str]:
    html = b"<html><head><title>Start</title></head><body><h1>Getting started</h1><p>Read me.</p></body></html>"
    (tmp_path / "getting-started.html").write_bytes(html)
    yield str(tmp_path)


def _where_sql(connect: Callable[[], Any], quote: Callable[[str], str]) -> Iterator[str]:
    table = f"orders_{uuid.uuid4().hex[:10]}"
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {quote(table)} (id INTEGER PRIMARY KEY, customer VARCHAR(50), "
                        "total NUMERIC(10,2), updated_at TIMESTAMP(6) NULL)")
            cur.execute(f"INSERT INTO {quote(table)} VALUES (1, 'Ada', 12.5, '2026-11-30 10:00:00')")
        yield table
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {quote(table)}")
        conn.close()


def _postgresql(_: Path) -> Iterator[str]:
    import psycopg

    yield from _where_sql(lambda: psycopg.connect(host="127.0.0.1", port=5433, user="ingest", password="ingest-secret",
                                                  dbname="ingest_test", autocommit=True), lambda n: f'"{n}"')


def _mysql(_: Path) -> Iterator[str]:
    import pymysql

    yield from _where_sql(lambda: pymysql.connect(host="127.0.0.1", port=3307, user="ingest", password="ingest-secret",
                                                  database="ingest_test", autocommit=True), lambda n: f"`{n}`")


def _mongodb(_: Path) -> Iterator[str]:
    import pymongo

    client = pymongo.MongoClient("mongodb://127.0.0.1:27018/", username="elastic", password="changeme",
                                 serverSelectionTimeoutMS=5000)
    collection = client["shop"][f"orders_{uuid.uuid4().hex[:10]}"]
    try:
        collection.insert_one({"customer": "Ada", "total": 12.5, "items": [{"sku": "A-1", "quantity": 2}],
                               "updated_at": datetime(2026, 11, 30, 10, tzinfo=timezone.utc)})
        yield collection.name
    finally:
        collection.drop()
        client.close()


def _object_store(store_class: str, url: str) -> Iterator[str]:
    from tests.sources import object_store_fixtures
    from tests.test_extract_text import make_pdf

    store = getattr(object_store_fixtures, store_class)(url)
    bucket = store.create_bucket()
    try:
        store.put(bucket, "2026/q3.pdf", make_pdf("Third quarter report"), content_type="application/pdf")
        yield bucket
    finally:
        store.drop_bucket(bucket)


def _redis(_: Path) -> Iterator[str]:
    import redis

    database = 20  # the docs example's own database (tests/sources/test_redis.py uses 1 to 19)
    client = redis.Redis(port=6380, password="redis-secret", db=database, socket_timeout=5)
    try:
        client.flushdb()
        client.hset("user:1", mapping={"name": "Ada", "city": "Zürich"})
        yield str(database)
    finally:
        client.flushdb()
        client.close()


def _network_drive(_: Path) -> Iterator[str]:
    import shutil

    share = Path(os.environ.get("SMB_HOME_DIR") or REPO / ".servers" / "samba") / "share"
    if not share.is_dir():
        raise FileNotFoundError(f"no Samba share at {share}")
    folder = share / f"Reports-{uuid.uuid4().hex[:10]}"
    folder.mkdir()
    try:
        (folder / "q3-summary.txt").write_text("Third quarter: revenue up 12% on the year.", encoding="utf-8")
        yield f"ingest/{folder.name}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


DATA: dict[str, Callable[[Path], Iterator[str]]] = {
    "dir": _where_dir, "postgresql": _postgresql, "mysql": _mysql, "mongodb": _mongodb,
    "s3": lambda _: _object_store("S3Store", "http://127.0.0.1:5002"),
    "google_cloud_storage": lambda _: _object_store("GcsStore", "http://127.0.0.1:4443"),
    "azure_blob_storage": lambda _: _object_store("AzureStore", "http://127.0.0.1:10000/devstoreaccount1"),
    "redis": _redis,
    "network_drive": _network_drive,
}
IDS = {service_type: f"docs-{service_type.replace('_', '-')}-{uuid.uuid4().hex[:8]}" for service_type in SOURCES}


@pytest.fixture(scope="module")
def daemon(es, tmp_path_factory):
    """One daemon serving the examples' connectors (and nothing else)."""
    from launcher.indices import CONNECTORS_INDEX, ensure_indices

    ensure_indices(es)
    folder = tmp_path_factory.mktemp("source-docs")
    config = write_config(folder / "config.yml", service={"connector_ids": sorted(IDS.values())})
    process = DaemonProcess(config, folder / "daemon.log")
    yield config
    process.stop()
    for connector_id in IDS.values():
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        es.indices.delete(index=f"test-{connector_id}", ignore_unavailable=True)


@pytest.mark.integration
@pytest.mark.parametrize("service_type", sorted(SOURCES))
def test_source_docs_when_example_run_on_the_test_server_then_documents_look_as_documented(
        service_type, daemon, es, tmp_path):
    create, sync = example_commands(service_type)
    connector_id, index = IDS[service_type], f"test-{IDS[service_type]}"
    data = DATA[service_type](tmp_path)
    try:
        where = next(data)
    except Exception as exc:  # noqa: BLE001 - the source's server is not running
        skip_or_fail(f"the {service_type} test server is not reachable ({type(exc).__name__}: {exc}); "
                     "start it with scripts/servers/")
    try:
        ours = {"--connector-id": connector_id, "--index-name": index}
        command = [ours.get(create[i - 1], word) if i else word for i, word in enumerate(create)]
        command = [f"{WHERE[service_type]}={where}" if word.startswith(f"{WHERE[service_type]}=") else word
                   for word in command]
        created = cli(*command, config=daemon)
        assert created.returncode == 0, created.stderr
        synced = cli(*[ours.get(sync[i - 1], word) if i else word for i, word in enumerate(sync)], config=daemon,
                     timeout=300)
        assert synced.returncode == 0, synced.stdout + synced.stderr

        (indexed,) = index_docs(es, index).values()
    finally:
        next(data, None)
    documented = documented_document(service_type)
    assert set(indexed) == set(documented) - {"_id"}, (indexed, documented)
    # Every document carries the pipeline flags, as the page shows them (a new connector's defaults).
    assert {k: indexed[k] for k in PIPELINE_FLAGS} == {k: documented[k] for k in PIPELINE_FLAGS}, indexed
    if "etag" in documented:  # as the real value: no quotes around it
        assert isinstance(indexed["etag"], str) and '"' not in indexed["etag"] + documented["etag"], indexed


if __name__ == "__main__":  # regenerate the generated parts of every page
    for service_type in sorted(SOURCES):
        path = page(service_type)
        path.write_text(render(path.read_text(encoding="utf-8"), load_source_class(source_entry(service_type)[0])),
                        encoding="utf-8")
        print(f"{path.relative_to(REPO)}: generated parts written")
