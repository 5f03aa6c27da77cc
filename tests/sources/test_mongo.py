"""The MongoDB source against a real MongoDB-wire server (FerretDB, from scripts/servers/mongo).

Start it with ``scripts/servers/mongo start``; ``MONGO_PORT``, ``MONGO_USER`` and
``MONGO_PASSWORD`` must match the script's (defaults: 27018, elastic, changeme). Without the
server the integration tests are skipped, or fail when ``CI=true``. Each test works in its
own database, dropped afterwards.

FerretDB 1.x cannot store Decimal128, JavaScript, MinKey/MaxKey or NaN values (it drops the
connection), so their conversion is covered by the unit tests at the bottom, without a server.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pymongo
import pytest
from bson import Binary, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS
from pymongo import monitoring

from sources.base import OP_INDEX, Filter
from sources.driver import SourceDriver, as_pair
from sources.errors import SourceConfigError, SourceUnavailable
from sources.mongo import MongoDataSource
from sources.mongo.source import document_id, mask_uri, plain_value
from sources.testing import ping, read_all, read_partitions
from tests.helpers import index_docs, require_server, run_sync
from transforms.normalize import json_safe

PORT = int(os.environ.get("MONGO_PORT", "27018"))
USER = os.environ.get("MONGO_USER", "elastic")
PASSWORD = os.environ.get("MONGO_PASSWORD", "changeme")
HOST = f"mongodb://127.0.0.1:{PORT}/"
UTC = timezone.utc


# -- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture(scope="module")
def mongo():
    """A pymongo client for the test server (the tests' own view of the data)."""
    client = pymongo.MongoClient(
        HOST, username=USER, password=PASSWORD, serverSelectionTimeoutMS=3000, tz_aware=True,
        uuidRepresentation="standard",
    )
    require_server("MongoDB (FerretDB)", HOST, lambda: client.admin.command("ping"))
    yield client
    client.close()


@pytest.fixture
def db(mongo):
    """A fresh database, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield mongo[name]
    mongo.drop_database(name)


def source(database: Any, collection: str = "items", **overrides: Any) -> MongoDataSource:
    configuration = {
        "host": HOST, "user": USER, "password": PASSWORD, "database": getattr(database, "name", database),
        "collection": collection, "timeout": 5, **overrides,
    }
    return MongoDataSource(configuration)


def call(src: MongoDataSource, method: str, *args: Any) -> Any:
    driver = SourceDriver(src)
    try:
        return driver.call(getattr(src, method), *args)
    finally:
        driver.close()


def read_incrementally(src: MongoDataSource, cursor: Any, filtering: Any = None) -> list[tuple]:
    driver = SourceDriver(src)
    try:
        return [as_pair(item) for item in driver.iterate(src.get_docs_incrementally(cursor, filtering))]
    finally:
        driver.close()


def collection_as_docs(collection: Any) -> list[dict[str, Any]]:
    """What the source should yield for a collection of plain values (ints, strings, lists, dicts)."""
    return [
        {"_id": str(doc["_id"]), **{k: v for k, v in doc.items() if k != "_id"}}
        for doc in collection.find().sort("_id", 1)
    ]


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _CommandCounter(monitoring.CommandListener):
    """Counts the commands pymongo sends to one database (registered once, process-wide)."""

    database = ""
    counts: dict[str, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database:
            self.counts[event.command_name] = self.counts.get(event.command_name, 0) + 1

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


_COUNTER = _CommandCounter()
monitoring.register(_COUNTER)  # applies to clients created from now on (the sources' own)


# -- reading -------------------------------------------------------------------------------
@pytest.mark.integration
def test_read_when_documents_have_varied_types_then_values_are_plain(db):
    oid, ref, uid = ObjectId(), ObjectId(), uuid.uuid4()
    when = datetime(2024, 5, 17, 8, 30, 15, 123000, tzinfo=UTC)
    db.items.insert_many([
        {
            "_id": oid, "title": "Café ☕", "count": 3, "big": Int64(2**40), "ratio": 0.25, "flag": True,
            "missing": None, "tags": ["a", "b", 3], "nested": {"inner": {"level": 2, "list": [1, {"x": "y"}]}},
            "when": when, "ref": ref, "raw": b"\x00\x01\xff", "blob": Binary(b"xy", 5), "uuid": uid,
            "pattern": Regex("^ab", "i"), "ts": Timestamp(1700000000, 1), "people": [{"name": "a"}, {"name": "b"}],
        },
        {"_id": 7, "title": "int id"},
        {"_id": "slug-1", "title": "string id"},
        {"_id": {"region": "eu", "n": 1}, "title": "document id"},
    ])

    docs = {d["_id"]: d for d in read_all(source(db))}

    assert docs[str(oid)] == {
        "_id": str(oid), "title": "Café ☕", "count": 3, "big": 2**40, "ratio": 0.25, "flag": True, "missing": None,
        "tags": ["a", "b", 3], "nested": {"inner": {"level": 2, "list": [1, {"x": "y"}]}}, "when": when,
        "ref": str(ref), "raw": b"\x00\x01\xff", "blob": b"xy", "uuid": str(uid), "pattern": "/^ab/i",
        "ts": datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), "people": [{"name": "a"}, {"name": "b"}],
    }
    assert type(docs[str(oid)]["big"]) is int and type(docs[str(oid)]["blob"]) is bytes
    assert docs["7"] == {"_id": "7", "title": "int id"}
    assert docs["slug-1"]["title"] == "string id"
    assert docs['{"region": "eu", "n": 1}']["title"] == "document id"
    assert "_timestamp" not in docs["7"]
    json.dumps(json_safe(list(docs.values())))  # the pipeline can serialize every value


@pytest.mark.integration
def test_read_when_documents_change_and_are_deleted_then_read_equals_collection(db):
    db.items.insert_many([{"_id": i, "name": f"n{i}", "tags": [i, i + 1], "meta": {"even": i % 2 == 0}}
                          for i in range(20)])
    assert read_all(source(db)) == collection_as_docs(db.items)

    db.items.update_many({"_id": {"$in": [1, 5]}}, {"$set": {"name": "changed"}, "$unset": {"meta": ""}})
    db.items.delete_many({"_id": {"$in": [2, 7, 19]}})
    db.items.insert_one({"_id": 100, "name": "new", "tags": []})
    docs = read_all(source(db))

    assert docs == collection_as_docs(db.items)  # the same documents, in _id order
    assert [d["_id"] for d in docs][-2:] == ["18", "100"] and docs[1] == {"_id": "1", "name": "changed", "tags": [1, 2]}


@pytest.mark.integration
@pytest.mark.parametrize("count", [49, 50])
def test_read_when_more_documents_than_one_batch_then_each_read_once_in_batches(db, count):
    db.items.insert_many([{"_id": ObjectId(), "n": n} for n in range(count)])
    _COUNTER.database, _COUNTER.counts = db.name, {}

    docs = read_all(source(db, batch_size=7))

    assert sorted(d["n"] for d in docs) == list(range(count))
    assert [d["_id"] for d in docs] == sorted(d["_id"] for d in docs)  # ObjectId hex sorts like ObjectIds
    assert _COUNTER.counts.get("getMore", 0) >= count // 7 - 1, _COUNTER.counts


# -- partitions ----------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("make_id", [lambda n: ObjectId(), lambda n: n * 3, lambda n: f"key-{n:04d}",
                                     lambda n: datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=n)],
                         ids=["objectid", "int", "str", "date"])
def test_partitions_when_read_in_parallel_then_same_as_single_read(db, make_id):
    db.items.insert_many([{"_id": make_id(n), "n": n} for n in range(95)])
    src = source(db, batch_size=10, partition_count=4)

    partitions = src.get_partitions()
    per_partition = [read_all(src, partition=p, close=False) for p in partitions]
    call(src, "close")

    assert len(partitions) == 4 and all(per_partition), [p.key for p in partitions]
    assert [d for docs in per_partition for d in docs] == read_all(source(db))  # every doc once, in order
    assert read_partitions(source(db, batch_size=10, partition_count=4)) == read_all(source(db))


@pytest.mark.integration
def test_partitions_when_small_or_ids_of_mixed_types_then_one_partition(db):
    db.items.insert_many([{"_id": n, "n": n} for n in range(30)])
    assert len(source(db, batch_size=100, partition_count=4).get_partitions()) == 1

    db.items.insert_one({"_id": "text", "n": -1})
    src = source(db, batch_size=5, partition_count=4)
    assert len(src.get_partitions()) == 1
    assert len(read_partitions(src)) == 31


# -- advanced sync rules -------------------------------------------------------------------
@pytest.fixture
def catalog(db):
    db.items.insert_many([
        {"_id": n, "n": n, "kind": "even" if n % 2 == 0 else "odd", "when": datetime(2024, 1, 1 + n % 28, tzinfo=UTC),
         "extra": "x"}
        for n in range(60)
    ])
    return db


@pytest.mark.integration
def test_advanced_rules_when_find_filter_then_only_matching_documents_in_every_partition(catalog):
    rules = {"find": {"filter": {"kind": "even", "when": {"$gte": {"$date": "2024-01-10T00:00:00Z"}}},
                      "projection": {"n": 1, "kind": 1}}}
    src = source(catalog, batch_size=10, partition_count=3)
    assert src.validate_advanced_rules(rules) == []

    docs = read_partitions(src, filtering=Filter(advanced_rules=rules))

    expected = [{"_id": str(n), "n": n, "kind": "even"} for n in range(60) if n % 2 == 0 and 1 + n % 28 >= 10]
    assert docs == expected


@pytest.mark.integration
def test_advanced_rules_when_aggregate_then_pipeline_read_once(catalog):
    rules = {"value": {"aggregate": {"pipeline": [{"$match": {"kind": "odd"}}, {"$project": {"n": 1}},
                                                  {"$sort": {"n": -1}}]}}}
    src = source(catalog, batch_size=10, partition_count=3)
    assert src.validate_advanced_rules(rules) == []

    docs = read_partitions(src, filtering=Filter(advanced_rules=rules))

    assert docs == [{"_id": str(n), "n": n} for n in range(59, 0, -2)]


@pytest.mark.integration
def test_advanced_rules_when_find_with_limit_then_read_whole_by_first_partition(catalog):
    rules = {"find": {"filter": {"kind": "odd"}, "skip": 2, "limit": 5}}
    docs = read_partitions(source(catalog, batch_size=10, partition_count=3), filtering=Filter(advanced_rules=rules))

    assert [d["n"] for d in docs] == [5, 7, 9, 11, 13]


def test_validate_advanced_rules_when_snippet_malformed_then_problems_named():
    src = MongoDataSource({"host": HOST, "database": "d", "collection": "c"})

    assert src.validate_advanced_rules({}) == []
    assert src.validate_advanced_rules({"find": {}}) == []
    assert "single key" in src.validate_advanced_rules({"find": {}, "aggregate": {}})[0]
    assert "single key" in src.validate_advanced_rules([{"find": {}}])[0]
    assert "unknown keys sort" in src.validate_advanced_rules({"find": {"sort": {"n": 1}}})[0]
    assert "`find.filter` must be an object" in src.validate_advanced_rules({"find": {"filter": "x"}})
    assert "`find.limit` must be a whole number" in src.validate_advanced_rules({"find": {"limit": True}})
    assert "must not exclude `_id`" in src.validate_advanced_rules({"find": {"projection": {"_id": 0}}})[0]
    assert "non-empty list" in src.validate_advanced_rules({"aggregate": {"pipeline": []}})[0]
    assert "stage 2" in src.validate_advanced_rules({"aggregate": {"pipeline": [{"$match": {}}, {"match": {}}]}})[0]
    assert "Extended JSON" in src.validate_advanced_rules({"find": {"filter": {"_id": {"$oid": "zz"}}}})[0]


# -- incremental syncs ---------------------------------------------------------------------
@pytest.mark.integration
def test_incremental_when_documents_change_then_only_changed_and_undated_documents_read(db):
    old = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    db.items.insert_many([{"_id": n, "name": f"n{n}", "updated_at": old} for n in range(10)])
    db.items.insert_one({"_id": 10, "name": "no date"})
    full = source(db, timestamp_field="updated_at", batch_size=4, partition_count=2)
    partitions = full.get_partitions()
    cursor = full.sync_cursor()
    docs = [d for p in partitions for d in read_all(full, partition=p, close=False)]
    call(full, "close")
    assert docs[0]["_timestamp"] == old.isoformat() and "_timestamp" not in docs[-1]

    now = datetime.now(UTC)
    db.items.update_one({"_id": 3}, {"$set": {"name": "changed", "updated_at": now}})
    db.items.insert_one({"_id": 11, "name": "new", "updated_at": now})
    db.items.delete_one({"_id": 4})
    incremental = source(db, timestamp_field="updated_at")
    changes = read_incrementally(incremental, cursor)

    by_id = {doc["_id"]: (doc, operation) for doc, _, operation in changes}
    assert sorted(by_id) == ["10", "11", "3"]  # "4" was deleted: not seen incrementally
    assert {operation for _, operation in by_id.values()} == {OP_INDEX}
    assert by_id["3"][0]["name"] == "changed" and by_id["3"][0]["_timestamp"].startswith(now.isoformat()[:19])
    assert incremental.sync_cursor()["timestamp"] > cursor["timestamp"]


@pytest.mark.integration
def test_incremental_when_no_cursor_then_every_document_read(db):
    db.items.insert_many([{"_id": n, "updated_at": datetime(2020, 1, 1, tzinfo=UTC)} for n in range(5)])
    assert len(read_incrementally(source(db, timestamp_field="updated_at"), None)) == 5


# -- configuration and errors --------------------------------------------------------------
@pytest.mark.integration
def test_validate_config_when_collection_missing_then_collections_listed(db):
    db.alpha.insert_one({"_id": 1})
    db.beta.insert_one({"_id": 1})

    call(source(db, "alpha"), "validate_config")
    with pytest.raises(SourceConfigError) as raised:
        call(source(db, "nope"), "validate_config")

    expected = f"collection `nope` does not exist in database `{db.name}`; collections are: alpha, beta"
    assert str(raised.value) == expected


@pytest.mark.integration
def test_validate_config_when_database_missing_then_databases_listed(db):
    db.alpha.insert_one({"_id": 1})

    with pytest.raises(SourceConfigError, match=r"database `no_such_db` does not exist; databases are: .*") as raised:
        call(source("no_such_db"), "validate_config")

    assert db.name in str(raised.value)


@pytest.mark.integration
def test_ping_when_password_wrong_then_auth_error_without_password(db, caplog):
    secret = "Wr0ng-S3cret-value"
    src = source(db, password=secret)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(SourceConfigError, match=f"authentication failed for user `{USER}`") as raised:
        ping(src)

    shown = [str(raised.value), str(raised.value.__cause__), repr(src.settings), repr(src.configuration)]
    assert not any(secret in text for text in [*shown, caplog.text])


@pytest.mark.integration
def test_validate_config_when_no_credentials_then_not_allowed_error(db):
    db.alpha.insert_one({"_id": 1})

    with pytest.raises(SourceConfigError, match="user `\\(none\\)` is not allowed to list the collections"):
        call(source(db, "alpha", user="", password=""), "validate_config")


def test_ping_when_server_unreachable_then_source_unavailable_without_password(caplog):
    port, secret = unused_port(), "s3cret-In-Uri"
    src = MongoDataSource({"host": f"mongodb://{USER}:{secret}@127.0.0.1:{port}/", "database": "d",
                           "collection": "c", "timeout": 1})
    caplog.set_level(logging.DEBUG)

    masked = rf"mongodb://{USER}:\*\*\*\*@127.0.0.1:{port}/"
    with pytest.raises(SourceUnavailable, match=f"cannot reach MongoDB at {masked}"):
        ping(src)

    assert secret not in caplog.text and secret not in repr(src.settings)


def test_configuration_when_invalid_then_every_problem_named():
    src = MongoDataSource({"host": "http://example.com", "database": "", "collection": "c", "batch_size": 0})

    with pytest.raises(SourceConfigError) as raised:
        ping(src)

    message = str(raised.value)
    assert "host: expected a mongodb:// or mongodb+srv:// URI" in message
    assert "database: required" in message and "batch_size: must be at least 1, got 0" in message


def test_default_configuration_when_listed_then_fields_complete():
    schema = MongoDataSource.get_default_configuration()

    for name in ("host", "user", "password", "database", "collection", "direct_connection", "ssl_enabled", "ssl_ca",
                 "tls_insecure", "batch_size", "partition_count", "timestamp_field"):
        assert {"label", "order", "type"} <= set(schema[name]), name
    assert schema["password"]["sensitive"] is True
    assert schema["ssl_ca"]["depends_on"] == [{"field": "ssl_enabled", "value": True}]
    assert schema["direct_connection"]["type"] == "bool"
    assert MongoDataSource.features()["incremental_sync"]["enabled"]


# -- value conversion (no server) ----------------------------------------------------------
def test_plain_value_when_bson_types_then_plain_python_values():
    oid = ObjectId()
    assert plain_value(Decimal128("12.30")) == Decimal("12.30")
    assert plain_value({"a": [Decimal128("1E+2"), Int64(5)]}) == {"a": [Decimal("1E+2"), 5]}
    assert plain_value(Code("return 1")) == "return 1" and type(plain_value(Code("x"))) is str
    assert plain_value(MinKey()) == "MinKey" and plain_value(MaxKey()) == "MaxKey"
    assert plain_value(DBRef("users", oid, "app")) == {"$ref": "users", "$id": str(oid), "$db": "app"}
    assert plain_value(Regex("a.b", "ms")) == "/a.b/ms"
    assert plain_value(DatetimeMS(2**62)) == 2**62
    assert plain_value(datetime(2024, 1, 1)) == datetime(2024, 1, 1, tzinfo=UTC)
    assert plain_value(Binary(b"\x01", 0)) == b"\x01"
    json.dumps(json_safe(plain_value({"d": Decimal128("NaN"), "x": Decimal128("-0.5")})))


def test_document_id_when_various_types_then_stable_strings():
    oid = ObjectId()
    assert document_id(oid) == str(oid)
    assert document_id("abc") == "abc"
    assert document_id(Int64(7)) == "7" and document_id(7.0) == "7" and document_id(2.5) == "2.5"
    assert document_id(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00+00:00"
    assert document_id(Decimal128("1.10")) == "1.10"
    assert document_id({"a": 1, "b": "x"}) == '{"a": 1, "b": "x"}'
    assert document_id(True) == "true"


def test_mask_uri_when_credentials_then_password_hidden():
    uri = "mongodb://u:p%40ss@h1:1,h2:2/db?authSource=admin"
    assert mask_uri(uri) == "mongodb://u:****@h1:1,h2:2/db?authSource=admin"
    assert mask_uri("mongodb+srv://user@cluster.example.net") == "mongodb+srv://user@cluster.example.net"
    assert mask_uri("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"


# -- end to end ----------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.slow
def test_sync_when_documents_change_and_are_deleted_then_index_matches_collection(db, es, index_name):
    db.items.insert_many([{"_id": ObjectId(), "name": f"n{n}", "n": n, "nested": {"even": n % 2 == 0}}
                          for n in range(40)])
    configuration = {"host": HOST, "user": USER, "password": PASSWORD, "database": db.name, "collection": "items",
                     "batch_size": 8, "partition_count": 3}

    def index_as_collection() -> dict[str, tuple]:
        return {i: (d["name"], d["n"], d["nested"]) for i, d in index_docs(es, index_name).items()}

    def collection() -> dict[str, tuple]:
        return {str(d["_id"]): (d["name"], d["n"], d["nested"]) for d in db.items.find()}

    def sync() -> None:
        outcome = run_sync(index=index_name, configuration=configuration, service_type="mongodb")
        assert outcome["status"] == "completed", outcome.get("error")

    sync()
    assert index_as_collection() == collection()

    ids = [d["_id"] for d in db.items.find().sort("_id", 1)]
    db.items.update_many({"_id": {"$in": ids[:3]}}, {"$set": {"name": "changed"}})
    db.items.delete_many({"_id": {"$in": ids[10:14]}})
    db.items.insert_one({"_id": ObjectId(), "name": "new", "n": 100, "nested": {"even": True}})
    sync()

    assert index_as_collection() == collection()
    assert len(index_as_collection()) == 37 and index_as_collection()[str(ids[0])][0] == "changed"
