"""The redis source against a real Redis (Debian's redis-server, from scripts/servers/redis).

Start it with ``scripts/servers/redis start``. The tests write as the `default` user and read
as the script's read-only user `ingest`, whose ACL refuses KEYS and every write: a source
that used KEYS or wrote anything would fail here. Without the server the integration tests
are skipped, or fail when ``CI=true``. Each test uses databases of its own (1 to 19; the
docs example uses 20 and the benchmark 30), emptied before and after.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from sources.base import Filter
from sources.driver import build_source
from sources.errors import SourceConfigError, SourceUnavailable, SyncRulesError
from sources.redis import RedisDataSource
from sources.redis.rules import glob_regex, parse_rules, rule_problems
from sources.redis.source import RedisSettings, encode_value
from sources.testing import check_source_contract, ping, read_all, read_partitions
from tests.helpers import REPO, index_docs, require_server, run_sync
from tests.sources.sql_fixtures import call, unused_port

PORT = int(os.environ.get("REDIS_PORT", "6380"))
TLS_PORT = int(os.environ.get("REDIS_TLS_PORT", "6381"))
ADMIN_PASSWORD = os.environ.get("REDIS_PASSWORD", "redis-secret")
READER = {"host": "127.0.0.1", "port": PORT, "username": "ingest", "password": "ingest-secret"}


# -- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture(scope="module")
def admin():
    """The tests' own client (the `default` user, every command)."""
    client = redis.Redis(port=PORT, password=ADMIN_PASSWORD, socket_timeout=5)
    require_server("Redis", f"127.0.0.1:{PORT}", client.ping)
    yield client
    client.close()


@pytest.fixture
def dbs(admin):
    """``dbs(1, 2)``: clients of those databases, emptied now and after the test."""
    opened: list[redis.Redis] = []

    def claim(*numbers: int) -> list[redis.Redis]:
        clients = [redis.Redis(port=PORT, password=ADMIN_PASSWORD, db=n, socket_timeout=5) for n in numbers]
        for client in clients:
            client.flushdb()
        opened.extend(clients)
        return clients

    yield claim
    for client in opened:
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def tls_dir() -> Path:
    folder = os.environ.get("REDIS_TLS_DIR") or subprocess.run(
        [str(REPO / "scripts" / "servers" / "redis"), "tls-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = Path(folder)
    if not (path / "ca.crt").is_file():
        pytest.skip(f"no certificates in {path}: run scripts/servers/redis start")
    return path


def source(**overrides: Any) -> RedisDataSource:
    return RedisDataSource({**READER, **overrides})


def fill(client: redis.Redis, tag: str = "") -> None:
    """One key of every type (and a few edge cases)."""
    client.set(f"greeting{tag}", "hello ☕")
    client.set(f"json-text{tag}", '{"b": 1, "a": [1, 2]}')
    client.hset(f"user:1{tag}", mapping={"name": "Ada", "visits": "3", "city": "Zürich"})
    client.rpush(f"queue{tag}", "c", "a", "b", "a")
    client.sadd(f"tags{tag}", "red", "blue", "green")
    client.zadd(f"board{tag}", {"ada": 30, "bob": 10.5, "cy": float("-inf")})
    client.xadd(f"events{tag}", {"kind": "login", "user": "ada"}, id="1700000000000-0")
    client.xadd(f"events{tag}", {"kind": "logout"}, id="1700000000001-0")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def _score(score: float) -> Any:
    return score if score not in (float("inf"), float("-inf")) else ("inf" if score > 0 else "-inf")


def expected(client: redis.Redis, database: int) -> dict[str, dict[str, Any]]:
    """What the index must hold for ``database``, computed here from the server, independently
    of the source (with the stdlib's json, not the source's encoder)."""
    def dumps(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)

    docs = {}
    for key in client.scan_iter(count=500):
        kind = _text(client.type(key))
        if kind == "string":
            value = _text(client.get(key))
        elif kind == "hash":
            value = dumps({_text(k): _text(v) for k, v in client.hgetall(key).items()})
        elif kind == "list":
            value = dumps([_text(v) for v in client.lrange(key, 0, -1)])
        elif kind == "set":
            value = dumps(sorted(_text(v) for v in client.smembers(key)))
        elif kind == "zset":
            value = dumps([[_text(m), _score(s)] for m, s in client.zrange(key, 0, -1, withscores=True)])
        elif kind == "stream":
            value = dumps([[_text(i), {_text(k): _text(v) for k, v in f.items()}] for i, f in client.xrange(key)])
        else:
            raise AssertionError(f"unexpected type {kind}")
        try:
            doc_id = f"{database}/{key.decode('utf-8')}"
        except UnicodeDecodeError:
            doc_id = f"{database}~{key.hex()}"
        docs[doc_id] = {"key": _text(key), "key_type": kind, "database": database, "value": value}
    return docs


def comparable(docs: list[dict[str, Any]] | dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Documents by id without ``size_in_bytes`` (Redis's estimate) and the fields the service adds."""
    items = docs.items() if isinstance(docs, dict) else ((d["_id"], d) for d in docs)
    return {i: {k: v for k, v in d.items() if k in ("key", "key_type", "database", "value")} for i, d in items}


# -- reading -------------------------------------------------------------------------------
@pytest.mark.integration
def test_read_when_every_type_then_documents_in_elastic_shape_with_json_values(dbs):
    (db1,) = dbs(1)
    fill(db1)
    db1.set(b"raw\x80key", b"\xff\x00bytes")
    db1.xadd("empty-stream", {"x": "1"}, id="1-1")
    db1.xdel("empty-stream", "1-1")

    docs = {d["_id"]: d for d in read_all(source(database="1"))}

    assert docs["1/user:1"] == {"_id": "1/user:1", "key": "user:1", "key_type": "hash", "database": 1,
                                "value": '{"city":"Zürich","name":"Ada","visits":"3"}',
                                "size_in_bytes": docs["1/user:1"]["size_in_bytes"]}
    assert docs["1/user:1"]["size_in_bytes"] == db1.memory_usage("user:1")
    assert docs["1/greeting"]["value"] == "hello ☕" and docs["1/greeting"]["key_type"] == "string"
    assert docs["1/json-text"]["value"] == '{"b": 1, "a": [1, 2]}'  # a string stays as written
    assert json.loads(docs["1/queue"]["value"]) == ["c", "a", "b", "a"]
    assert json.loads(docs["1/tags"]["value"]) == ["blue", "green", "red"]
    assert json.loads(docs["1/board"]["value"]) == [["cy", "-inf"], ["bob", 10.5], ["ada", 30.0]]
    assert json.loads(docs["1/events"]["value"]) == [["1700000000000-0", {"kind": "login", "user": "ada"}],
                                                     ["1700000000001-0", {"kind": "logout"}]]
    assert docs["1/empty-stream"]["value"] == "[]"
    binary = docs["1~" + b"raw\x80key".hex()]
    assert binary["key"] == "raw\\x80key" and binary["value"] == "\\xff\x00bytes"
    assert comparable(docs) == expected(db1, 1)


@pytest.mark.integration
def test_read_when_many_keys_in_small_batches_then_each_key_once_and_partitions_by_database(dbs):
    db2, db3 = dbs(2, 3)
    db2.mset({f"k{n}": str(n) for n in range(150)})
    db3.mset({f"other{n}": str(n) for n in range(20)})
    configuration = {**READER, "database": "2, 3", "batch_size": 7}

    docs = check_source_contract(RedisDataSource, configuration)  # partitions cover the source exactly once
    partitions = RedisDataSource(configuration).get_partitions()

    assert [p.key for p in partitions] == ["db2", "db3"]
    assert sorted(d["_id"] for d in docs) == sorted([f"2/k{n}" for n in range(150)] +
                                                    [f"3/other{n}" for n in range(20)])


@pytest.mark.integration
def test_read_when_all_databases_then_every_database_that_holds_keys(dbs):
    db4, db5, db6 = dbs(4, 5, 6)
    db4.set("a", "1")
    db6.hset("h", "f", "v")

    src = source(database="*")
    databases = {p.params["database"] for p in src.get_partitions()}
    docs = [d for d in read_partitions(source(database="*")) if d["database"] in (4, 5, 6)]

    assert {4, 6} <= databases and 5 not in databases
    assert sorted(d["_id"] for d in docs) == ["4/a", "6/h"]


# -- the index equals the server ------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.slow
def test_sync_when_keys_added_changed_and_deleted_then_index_equals_the_server(dbs, es, index_name):
    db7, db8 = dbs(7, 8)
    fill(db7)
    fill(db8, ":b")
    db7.mset({f"n{n}": str(n) for n in range(60)})
    configuration = {**READER, "database": "7,8", "batch_size": 25}

    def sync() -> None:
        outcome = run_sync(index=index_name, configuration=configuration, service_type="redis")
        assert outcome["status"] == "completed", outcome.get("error")

    def server() -> dict[str, dict[str, Any]]:
        return {**expected(db7, 7), **expected(db8, 8)}

    sync()
    assert comparable(index_docs(es, index_name)) == server()

    # every type changed, keys added and deleted, one database emptied
    db7.set("greeting", "bonjour")
    db7.hset("user:1", mapping={"visits": "4", "email": "ada@example.com"})
    db7.hdel("user:1", "city")
    db7.rpush("queue", "d")
    db7.lpop("queue")
    db7.srem("tags", "red")
    db7.sadd("tags", "black")
    db7.zincrby("board", 100, "bob")
    db7.xadd("events", {"kind": "again"}, id="1700000000002-0")
    db7.delete(*[f"n{n}" for n in range(10)])
    db7.set("new-key", "fresh")
    db7.delete("json-text")
    db7.set("tags-now-string", "x")
    db7.rename("tags-now-string", "queue")  # queue: a list becomes a string
    db8.flushdb()
    sync()

    indexed = comparable(index_docs(es, index_name))
    assert indexed == server()
    assert "8/greeting:b" not in indexed and "7/n0" not in indexed and indexed["7/queue"]["key_type"] == "string"
    assert json.loads(indexed["7/board"]["value"])[-1] == ["bob", 110.5]


# -- advanced sync rules --------------------------------------------------------------------
@pytest.mark.integration
def test_rules_when_patterns_and_types_then_only_those_keys_each_once(dbs):
    db9, db10 = dbs(9, 10)
    fill(db9)
    db9.hset("user:2", "name", "Bob")
    db9.set("user:3", "a string user")
    db10.set("session:1", "s1")
    db10.set("session:x", "sx")
    rules = [{"database": 9, "key_pattern": "user:*", "type": "HASH"},
             {"database": 9, "key_pattern": "user:[13]"},          # user:1 again (read once) and user:3
             {"database": 9, "type": "zset"},
             {"database": 10, "key_pattern": "session:[0-9]"}]      # a database the configuration does not name
    filtering = Filter(advanced_rules=rules)

    src = source(database="9")
    assert call(src, "validate_advanced_rules", rules) == []
    docs = read_partitions(source(database="9"), filtering=filtering)

    assert sorted(d["_id"] for d in docs) == ["10/session:1", "9/board", "9/user:1", "9/user:2", "9/user:3"]


@pytest.mark.integration
def test_rules_when_invalid_then_each_problem_names_its_rule(admin):
    src = source(database="0")

    problems = call(src, "validate_advanced_rules", [
        {"database": 0}, {"database": -1, "key_pattern": "a*"}, {"key_pattern": "a*"},
        {"database": 0, "type": "graph"}, {"database": 0, "key_pattern": "a", "pattern": "b"},
        {"database": 99, "key_pattern": "a*"}])

    assert problems[:6] == [
        "rule 1: give `key_pattern`, `type` or both",
        "rule 2: `database` must be a whole number of 0 or more, got -1",
        "rule 3: `database` is required (a database number, e.g. 0)",
        "rule 4: `type` must be one of HASH, LIST, SET, STREAM, STRING, ZSET or ReJSON-RL, got 'graph'",
        "rule 5: unknown keys pattern; allowed: database, key_pattern, type",
    ][:len(problems[:6])] and len(problems) == 5  # the remote check runs only on rules valid in shape
    assert call(src, "validate_advanced_rules", [{"database": 99, "key_pattern": "a*"}]) == [
        "rule 1: database 99 does not exist: Redis at redis://127.0.0.1:%d has 32 databases (0 to 31)" % PORT]
    assert call(src, "validate_advanced_rules", {"value": [{"database": 1, "type_": "SET"}]}) == []
    with pytest.raises(SyncRulesError, match=r"rule 1: `type` must be one of"):
        read_all(source(database="0"), filtering=Filter(advanced_rules=[{"database": 0, "type": "graph"}]))


@pytest.mark.integration
def test_glob_when_compared_with_scan_match_on_the_server_then_same_keys(dbs):
    """The local matcher (a key read by two rules is read once) agrees with Redis's own MATCH."""
    (db11,) = dbs(11)
    keys = ["a", "ab", "abc", "b", "a*", "a?", "[x]", "h\\ello", "hello", "hallo", "hxllo", "a-z", "m", "^x",
            "user:1", "user:10", "ü", "ä1", "]", "-"]
    db11.mset({k: "1" for k in keys})
    patterns = ["*", "a*", "a?", "?", "a\\*", "a\\?", "h[ae]llo", "h[^e]llo", "h[a-e]llo", "h[e-a]llo", "[\\[]*",
                "user:[0-9]", "user:[0-9]*", "*[-]*", "[a-c]", "[^a-c]", "\\^x", "*\\\\*", "ü", "?1", "[]]", "[]"]

    for pattern in patterns:
        on_server = sorted(_text(k) for k in db11.scan_iter(match=pattern, count=1000))
        local = sorted(k for k in keys if glob_regex(pattern).fullmatch(k.encode("utf-8")))
        assert local == on_server, pattern


# -- TLS ------------------------------------------------------------------------------------
@pytest.mark.integration
def test_tls_when_ca_given_then_read_and_mutual_tls_checks_the_client_certificate(dbs, tls_dir):
    (db12,) = dbs(12)
    db12.set("secret-doc", "over TLS")
    tls = {**READER, "port": TLS_PORT, "database": "12", "ssl_enabled": True}
    client_pem = (tls_dir / "client.crt").read_text(), (tls_dir / "client.key").read_text()

    assert [d["_id"] for d in read_all(source(**tls, ssl_ca=str(tls_dir / "ca.crt")))] == ["12/secret-doc"]
    mutual = source(**tls, ssl_ca=(tls_dir / "ca.crt").read_text(), mutual_tls_enabled=True,
                    tls_certfile=client_pem[0], tls_keyfile=client_pem[1])     # PEM text, as Elastic's fields take
    assert [d["value"] for d in read_all(mutual)] == ["over TLS"]

    with pytest.raises(SourceConfigError, match=r"^ssl_ca: the certificate of Redis at rediss://127.0.0.1:\d+ "
                                                r"cannot be verified"):
        ping(source(**tls))                                            # the system's CAs do not know the test CA
    with pytest.raises(SourceConfigError, match=r"^ssl_ca: "):
        ping(source(**tls, ssl_ca=str(tls_dir / "rogue-ca.crt")))
    with pytest.raises(SourceConfigError, match=r"^tls_certfile: Redis at .* refused the client certificate"):
        ping(source(**tls, ssl_ca=str(tls_dir / "ca.crt"), mutual_tls_enabled=True,
                    tls_certfile=str(tls_dir / "rogue-client.crt"), tls_keyfile=str(tls_dir / "rogue-client.key")))
    with pytest.raises(SourceUnavailable, match=r"^host: cannot reach Redis at rediss://127.0.0.1:%d .*Timeout.* "
                                                r"\(is the port a TLS port\? `ssl_enabled` is true\)" % PORT):
        ping(source(**{**tls, "port": PORT}, ssl_ca=str(tls_dir / "ca.crt"), timeout=1))  # a plain port: no answer
    with pytest.raises(SourceConfigError, match=r"tls_keyfile: neither PEM text nor a readable file: \(value not shown\)"):
        ping(source(**tls, mutual_tls_enabled=True, tls_certfile=client_pem[0], tls_keyfile="not-a-key-secret"))


# -- errors that name the field -------------------------------------------------------------
@pytest.mark.integration
def test_errors_when_password_wrong_or_missing_then_password_named_and_never_shown(admin, caplog):
    caplog.set_level(logging.DEBUG)

    with pytest.raises(SourceConfigError) as wrong:
        ping(source(password="not-the-password-4711"))
    with pytest.raises(SourceConfigError) as missing:
        ping(source(username="", password=""))

    assert str(wrong.value).startswith(f"password: Redis at redis://127.0.0.1:{PORT} refused the username `ingest`")
    assert str(missing.value) == f"password: Redis at redis://127.0.0.1:{PORT} requires a password (while pinging the server)"
    assert "not-the-password-4711" not in str(wrong.value) + caplog.text
    assert "not-the-password-4711" not in repr(RedisSettings.from_configuration(source(password="not-the-password-4711").configuration))


@pytest.mark.integration
def test_errors_when_database_does_not_exist_or_is_not_a_number_then_database_named(admin):
    with pytest.raises(SourceConfigError) as absent:
        call(source(database="3, 40, 41"), "validate_config")
    with pytest.raises(SourceConfigError) as bad:
        source(database="1, two").settings
    with pytest.raises(SourceConfigError) as mixed:
        source(database="1, *").settings

    assert str(absent.value) == (f"database: database 40, 41 does not exist: Redis at redis://127.0.0.1:{PORT} "
                                 "has 32 databases (0 to 31)")
    assert "database: `*` (every database) cannot be combined with numbers" in str(mixed.value)
    assert "database: expected database numbers (0, 1, ...) or *, got 'two'" in str(bad.value)
    with pytest.raises(SourceConfigError, match=r"^database: database 40 does not exist on Redis"):
        read_all(source(database="40"))


def test_errors_when_host_unreachable_or_malformed_then_host_named():
    with pytest.raises(SourceUnavailable, match=r"^host: cannot reach Redis at redis://127.0.0.1:\d+ while pinging"):
        ping(source(port=unused_port(), timeout=2))
    with pytest.raises(SourceConfigError, match=r"host: expected a host name or IP address \(no scheme"):
        source(host="redis://127.0.0.1:6379").settings
    with pytest.raises(SourceConfigError, match=r"port: must be between 1 and 65535, got 70000"):
        source(port=70000).settings
    with pytest.raises(SourceConfigError, match=r"tls_certfile: required when mutual_tls_enabled is true; "
                                                r"tls_keyfile: required"):
        source(ssl_enabled=True, mutual_tls_enabled=True).settings


def test_allowed_hosts_when_host_not_allowed_then_refused_before_connecting():
    with pytest.raises(SourceConfigError, match=r"host 'redis\.example\.com' is refused"):
        build_source(RedisDataSource, {"host": "redis.example.com", "port": 6379}, {"allowed_hosts": ["127.0.0.1"]})


# -- values, without a server ---------------------------------------------------------------
def test_encode_value_when_json_module_or_unknown_type_then_sorted_json_or_null():
    assert encode_value("ReJSON-RL", b'{"b":[1,{"d":2,"c":1}],"a":"x"}') == '{"a":"x","b":[1,{"c":1,"d":2}]}'
    assert encode_value("TSDB-TYPE", b"anything") is None
    assert encode_value("hash", {b"\xff": b"v"}) == '{"\\\\xff":"v"}'


def test_rules_when_parsed_then_types_normalized_and_type_underscore_accepted():
    rules = parse_rules([{"database": 0, "type_": "json"}, {"database": 1, "key_pattern": "a*", "type": "Hash"}])

    assert [(r.database, r.key_pattern, r.type) for r in rules] == [(0, None, "ReJSON-RL"), (1, "a*", "hash")]
    assert rule_problems({"database": 0}) == [
        'advanced rules must be a list of rules like [{"database": 0, "key_pattern": "user:*", "type": "HASH"}], '
        "got dict"]


@pytest.mark.integration
def test_read_when_a_key_changes_type_or_vanishes_between_type_and_read_then_read_again_or_left_out(dbs):
    (db13,) = dbs(13)
    db13.rpush("shifty", "a", "b")
    db13.set("vanishing", "soon gone")
    db13.set("steady", "here")
    src = source(database="13")
    client = src._client(13)
    real_pipeline = client.pipeline
    calls = {"n": 0}

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute

        def execute_then_change(*a: Any, **k: Any) -> Any:
            answers = execute(*a, **k)
            calls["n"] += 1
            if calls["n"] == 1:  # after TYPE, before the values: another client rewrites two keys
                db13.delete("shifty", "vanishing")
                db13.hset("shifty", "now", "a hash")
            return answers

        pipe.execute = execute_then_change
        return pipe

    client.pipeline = pipeline

    docs = {d["_id"]: d for d in read_all(src)}

    assert calls["n"] >= 2
    assert sorted(docs) == ["13/shifty", "13/steady"]
    assert docs["13/shifty"]["key_type"] == "hash" and docs["13/shifty"]["value"] == '{"now":"a hash"}'


@pytest.mark.integration
def test_secrets_when_password_and_key_are_references_then_resolved_and_read(dbs, tls_dir, monkeypatch):
    from launcher.config import SecretsConfig
    from launcher.secret_refs import resolve_references

    (db14,) = dbs(14)
    db14.set("by-reference", "yes")
    monkeypatch.setenv("REDIS_READER_PASSWORD", READER["password"])
    fields = {name: {**spec, "value": ""} for name, spec in RedisDataSource.get_default_configuration().items()}
    given = {**READER, "port": TLS_PORT, "database": "14", "ssl_enabled": True, "ssl_ca": str(tls_dir / "ca.crt"),
             "mutual_tls_enabled": True, "tls_certfile": str(tls_dir / "client.crt"),
             "password": "${env:REDIS_READER_PASSWORD}", "tls_keyfile": f"${{file:{tls_dir / 'client.key'}}}"}
    for name, value in given.items():
        fields[name]["value"] = value

    resolved = resolve_references(fields, SecretsConfig(env=["REDIS_READER_*"], folders=[str(tls_dir)]))

    assert [d["value"] for d in read_all(RedisDataSource(resolved))] == ["yes"]
    assert resolved["tls_keyfile"]["value"].startswith("-----BEGIN")  # the key's PEM text, from the file
