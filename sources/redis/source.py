"""The Redis source: every key of one or more Redis databases, one document per key.

Documents (Elastic's Redis connector's fields)::

    {"_id": "0/user:1", "key": "user:1", "key_type": "hash", "database": 0,
     "value": "{\\"name\\":\\"Ada\\",\\"visits\\":\\"3\\"}", "size_in_bytes": 80}

* ``_id``: ``<database>/<key>``, stable as long as the key exists (a key that is not
  UTF-8 gets ``<database>~<key in hex>``, which no UTF-8 key can give; ids over 512 bytes
  are hashed by the service);
* ``value``: one text whatever the type, so the field has one mapping in an index that
  holds keys of every type: a string key's value itself; for the others compact JSON,
  in an order that does not change while the value does not: a hash's fields as an object
  (sorted by field), a list's items in order, a set's members sorted, a sorted set's
  ``[member, score]`` pairs in score order, a stream's ``[entry id, {field: value}]``
  entries in id order, a RedisJSON value (type ``ReJSON-RL``) as its JSON with sorted keys;
  a module type this source does not know gets ``null``. Bytes that are not UTF-8 are
  written with backslash escapes (``\\x80``). (Elastic's connector writes Python's repr,
  ``{'name': 'Ada'}``, which no JSON parser reads, and parses string values that hold JSON.)
* ``size_in_bytes``: ``MEMORY USAGE`` of the key (Redis's estimate of its memory);
* no ``_timestamp``: Redis keeps no modification time (``OBJECT IDLETIME`` is the last
  *access*), so every key is sent on every sync; a full sync deletes the documents of keys
  that are gone. (Elastic's connector stamps every document with the sync's time instead.)

Reading
    Keys are listed with ``SCAN`` (``batch_size`` per call, ``MATCH``/``TYPE`` pushed down
    from the advanced rules), never ``KEYS``, which blocks the server. Each batch is read in
    two pipelined round trips: ``TYPE`` and ``MEMORY USAGE`` of every key, then each key's
    value (``GET``, ``HGETALL``, ``LRANGE``, ``SMEMBERS``, ``ZRANGE ... WITHSCORES``,
    ``XRANGE``, ``JSON.GET``). A key deleted in between is left out; a key whose type
    changed in between is read again. SCAN returns every key that exists for the whole
    scan at least once, and may return a key twice when the database's table is resized
    during the scan: its document is then sent twice, the same both times.

Partitions
    One per database: the configured ones, or with ``*`` those ``INFO keyspace`` lists
    (the databases that hold keys; ``CONFIG GET databases`` when INFO is not allowed).

Advanced sync rules
    As Elastic's, see :mod:`sources.redis.rules`. The rules name the databases they read,
    and the configured ``database`` list is ignored.

Example usage::

    from sources.redis import RedisDataSource
    from sources.testing import read_all

    source = RedisDataSource({"host": "127.0.0.1", "port": 6380, "username": "ingest",
                              "password": "ingest-secret", "database": ["0", "1"]})
    docs = read_all(source)   # [{"_id": "0/user:1", "key": "user:1", "key_type": "hash", ...}, ...]
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
import redis
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from sources._tls import CaFile
from sources.base import BaseDataSource, Doc, Endpoint, Filter, Partition
from sources.config_values import read_flag, read_int, read_names, read_text
from sources.errors import SourceConfigError, SourceError, SourceUnavailable
from sources.redis.rules import RedisRule, parse_rules, rule_problems

__all__ = ["RedisDataSource", "RedisSettings", "document_of", "encode_value", "ALL_DATABASES"]

ALL_DATABASES = "*"
#: Attempts to read a key whose type keeps changing between TYPE and the read.
_TYPE_RETRIES = 5
#: A command that failed on a broken connection or a timeout is sent again this often (SCAN
#: with the same cursor and the reads are idempotent); the sync's own retries do the rest.
_COMMAND_RETRIES = 2
_JSON = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def _toggle(label: str, order: int, tooltip: str, **extra: Any) -> dict[str, Any]:
    return {"label": label, "order": order, "type": "bool", "display": "toggle", "default_value": False,
            "required": False, "tooltip": tooltip, **extra}


_CONFIGURATION: dict[str, dict[str, Any]] = {
    "host": {"label": "Host", "order": 1, "type": "str",
             "tooltip": "The Redis server's host name or IP address, e.g. 127.0.0.1 or redis.example.com."},
    "port": {"label": "Port", "order": 2, "type": "int", "display": "numeric", "default_value": 6379,
             "required": False, "tooltip": "The server's port."},
    "username": {"label": "Username", "order": 3, "type": "str", "required": False,
                 "tooltip": "An ACL user (Redis 6 or later); empty: the `default` user. It needs read access "
                            "(see Permissions)."},
    "password": {"label": "Password", "order": 4, "type": "str", "required": False, "sensitive": True,
                 "tooltip": "The user's password (requirepass for the default user); empty: none."},
    "database": {"label": "Comma-separated list of databases", "order": 5, "type": "list", "display": "textarea",
                 "default_value": [ALL_DATABASES], "required": False,
                 "tooltip": "Database numbers to index, e.g. 0,1,2, or * for every database that holds keys. "
                            "Ignored when advanced sync rules are used (they name their databases)."},
    "ssl_enabled": _toggle("SSL/TLS Connection", 6, "Connect with TLS (rediss://)."),
    "ssl_ca": {"label": "Certificate authority (.pem)", "order": 7, "type": "str", "display": "textarea",
               "required": False, "depends_on": [{"field": "ssl_enabled", "value": True}],
               "tooltip": "PEM text or path of the CA that signed the server's certificate (empty: the system's "
                          "CAs). The certificate must name the host."},
    "mutual_tls_enabled": _toggle("Mutual SSL/TLS Connection", 8,
                                  "Also present a client certificate, for servers that ask for one "
                                  "(tls-auth-clients).", depends_on=[{"field": "ssl_enabled", "value": True}]),
    "tls_certfile": {"label": "client certificate file for SSL/TLS", "order": 9, "type": "str",
                     "display": "textarea", "required": False,
                     "depends_on": [{"field": "mutual_tls_enabled", "value": True}],
                     "tooltip": "PEM text or path of the client certificate."},
    "tls_keyfile": {"label": "client private key file for SSL/TLS", "order": 10, "type": "str",
                    "display": "textarea", "required": False, "sensitive": True,
                    "depends_on": [{"field": "mutual_tls_enabled", "value": True}],
                    "tooltip": "PEM text or path of the client certificate's private key (unencrypted)."},
    "batch_size": {"label": "Keys per batch", "order": 11, "type": "int", "display": "numeric",
                   "default_value": 1000, "required": False, "ui_restrictions": ["advanced"],
                   "validations": [{"type": "greater_than", "constraint": 0}],
                   "tooltip": "Keys asked of each SCAN call and read per pipelined round trip."},
    "timeout": {"label": "Timeout (seconds)", "order": 12, "type": "int", "display": "numeric",
                "default_value": 10, "required": False, "ui_restrictions": ["advanced"],
                "validations": [{"type": "greater_than", "constraint": 0}],
                "tooltip": "How long to wait for the server to connect or answer."},
}


# -- settings ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RedisSettings:
    """The configuration, typed and checked. ``repr`` shows neither the password nor the key."""

    host: str
    port: int
    username: str
    password: str = dataclasses.field(repr=False)
    #: Database numbers, or None for ``*`` (every database that holds keys).
    databases: tuple[int, ...] | None
    ssl_enabled: bool
    ssl_ca: str | None
    mutual_tls_enabled: bool
    tls_certfile: str | None
    tls_keyfile: str | None = dataclasses.field(repr=False)
    batch_size: int
    timeout: float

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.ssl_enabled else 'redis'}://{host}:{self.port}"

    @classmethod
    def from_configuration(cls, config: Mapping[str, Any]) -> RedisSettings:
        """Parse every field, collect every problem, raise :class:`SourceConfigError` once."""
        problems: list[str] = []
        host = read_text(config, "host", problems).strip("[]")
        if "://" in host or "/" in host:
            problems.append(f"host: expected a host name or IP address (no scheme, port or path), got {host!r}")
        elif ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                problems.append(f"host: expected a host name or IP address (put the port in `port`), got {host!r}")
        port = read_int(config, "port", problems, minimum=1, maximum=65535, default=6379)
        databases: tuple[int, ...] | None = None
        names = read_names(config, "database") or (ALL_DATABASES,)
        if ALL_DATABASES in names:
            if len(names) > 1:
                problems.append(f"database: `*` (every database) cannot be combined with numbers, got {', '.join(names)}")
        else:
            numbers, bad = [], []
            for name in names:
                (numbers if name.isdigit() else bad).append(name)
            if bad:
                problems.append(f"database: expected database numbers (0, 1, ...) or *, got {', '.join(map(repr, bad))}")
            databases = tuple(sorted({int(n) for n in numbers}))
        ssl_enabled = read_flag(config, "ssl_enabled")
        mutual = ssl_enabled and read_flag(config, "mutual_tls_enabled")
        certfile = read_text(config, "tls_certfile", problems, required=False) or None
        keyfile = str(config.get("tls_keyfile") or "").strip() or None
        if mutual:
            for name, value in (("tls_certfile", certfile), ("tls_keyfile", keyfile)):
                if not value:
                    problems.append(f"{name}: required when mutual_tls_enabled is true")
        password = config.get("password")
        settings = cls(
            host=host, port=port, username=read_text(config, "username", problems, required=False),
            password="" if password is None else str(password), databases=databases, ssl_enabled=ssl_enabled,
            ssl_ca=(read_text(config, "ssl_ca", problems, required=False) or None) if ssl_enabled else None,
            mutual_tls_enabled=mutual, tls_certfile=certfile if mutual else None,
            tls_keyfile=keyfile if mutual else None,
            batch_size=read_int(config, "batch_size", problems, default=1000),
            timeout=float(read_int(config, "timeout", problems, default=10)),
        )
        if problems:
            raise SourceConfigError("invalid Redis configuration: " + "; ".join(problems))
        return settings


# -- values -----------------------------------------------------------------------------
def _text(value: bytes | str) -> str:
    """Bytes as text: UTF-8, with backslash escapes for bytes that are not."""
    return value if isinstance(value, str) else value.decode("utf-8", "backslashreplace")


def _score(score: float) -> float | str:
    return score if math.isfinite(score) else ("inf" if score > 0 else "-inf")


def encode_value(key_type: str, raw: Any) -> str | None:
    """The ``value`` field of a key of ``key_type`` read as ``raw`` (see the module docstring)."""
    if key_type == "string":
        return _text(raw)
    if key_type == "hash":
        shape: Any = {_text(f): _text(v) for f, v in raw.items()}
    elif key_type == "list":
        shape = [_text(item) for item in raw]
    elif key_type == "set":
        shape = sorted(_text(member) for member in raw)
    elif key_type == "zset":
        shape = [[_text(member), _score(float(score))] for member, score in raw]
    elif key_type == "stream":
        shape = [[_text(entry_id), {_text(f): _text(v) for f, v in fields.items()}] for entry_id, fields in raw]
    elif key_type == "ReJSON-RL":
        shape = orjson.loads(raw) if raw is not None else None
    else:
        return None
    return orjson.dumps(shape, option=_JSON).decode("utf-8")


def document_of(database: int, key: bytes, key_type: str, raw: Any, size: int | None) -> Doc:
    """The document of one key (see the module docstring)."""
    try:
        name = key.decode("utf-8")
        doc_id = f"{database}/{name}"
    except UnicodeDecodeError:
        name, doc_id = _text(key), f"{database}~{key.hex()}"
    return {"_id": doc_id, "key": name, "key_type": key_type, "database": database,
            "value": encode_value(key_type, raw), "size_in_bytes": size}


def _queue_read(pipe: Any, key: bytes, key_type: str) -> bool:
    """Queue the command that reads a key of ``key_type`` on ``pipe``; False for a type without one."""
    if key_type == "string":
        pipe.get(key)
    elif key_type == "hash":
        pipe.hgetall(key)
    elif key_type == "list":
        pipe.lrange(key, 0, -1)
    elif key_type == "set":
        pipe.smembers(key)
    elif key_type == "zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif key_type == "stream":
        pipe.xrange(key, "-", "+")
    elif key_type == "ReJSON-RL":
        pipe.execute_command("JSON.GET", key)
    else:
        return False
    return True


def _gone(key_type: str, raw: Any) -> bool:
    """Whether a read found the key deleted (Redis deletes empty hashes, lists, sets and sorted sets)."""
    if key_type in ("hash", "list", "set", "zset"):
        return not raw
    return raw is None and key_type in ("string", "ReJSON-RL")


# -- the source -------------------------------------------------------------------------
class RedisDataSource(BaseDataSource):
    """The keys of one or more Redis databases; see the module docstring for the documents."""

    name = "Redis"
    service_type = "redis"
    advanced_rules_enabled = True

    def __init__(self, configuration: Any = None, *, operator_settings: Any = None):
        super().__init__(configuration, operator_settings=operator_settings)
        self._settings: RedisSettings | None = None
        self._clients: dict[int, redis.Redis] = {}
        self._files = {"ssl_ca": CaFile(), "tls_certfile": CaFile("tls_certfile"),
                       "tls_keyfile": CaFile("tls_keyfile", secret=True)}

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {name: dict(spec) for name, spec in _CONFIGURATION.items()}

    @property
    def settings(self) -> RedisSettings:
        if self._settings is None:
            self._settings = RedisSettings.from_configuration(self.configuration)
        return self._settings

    def network_endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.settings.host, self.settings.port)]

    # -- client and errors -----------------------------------------------------------
    def _client(self, database: int = 0) -> redis.Redis:
        """A client of ``database`` (one connection pool per database), opened on first use."""
        client = self._clients.get(database)
        if client is None:
            s = self.settings
            options: dict[str, Any] = {
                "host": s.host, "port": s.port, "db": database, "username": s.username or None,
                "password": s.password or None, "socket_timeout": s.timeout, "socket_connect_timeout": s.timeout,
                "client_name": "elastic-ingest", "decode_responses": False, "protocol": 2,  # Redis 5 has no HELLO
                "retry": Retry(ExponentialBackoff(cap=1.0, base=0.1), _COMMAND_RETRIES),
            }
            if s.ssl_enabled:
                options.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True,
                               ssl_ca_certs=self._files["ssl_ca"].path(s.ssl_ca))
                if s.mutual_tls_enabled:
                    options.update(ssl_certfile=self._files["tls_certfile"].path(s.tls_certfile),
                                   ssl_keyfile=self._files["tls_keyfile"].path(s.tls_keyfile))
            client = self._clients[database] = redis.Redis(**options)
        return client

    @contextlib.contextmanager
    def _errors(self, action: str, database: int | None = None) -> Iterator[None]:
        """Translate redis-py's errors raised while ``action`` into :mod:`sources.errors`, naming the field."""
        s = self.settings
        where = f"Redis at {s.address}"
        try:
            yield
        except SourceError:
            raise
        except redis.exceptions.AuthenticationError as exc:
            if not s.password:  # NOAUTH
                raise SourceConfigError(f"password: {where} requires a password (while {action})") from exc
            raise SourceConfigError(
                f"password: {where} refused the username `{s.username or 'default'}` and password while {action} "
                "(WRONGPASS): check `username` and `password`") from exc
        except redis.exceptions.NoPermissionError as exc:
            raise SourceConfigError(
                f"username: user `{s.username or 'default'}` may not {action} on {where}: {exc}; give it the "
                "permissions docs/sources/redis.md lists") from exc
        except redis.exceptions.ResponseError as exc:
            if "DB index is out of range" in str(exc) or "invalid DB index" in str(exc):
                raise SourceConfigError(
                    f"database: database {database} does not exist on {where} ({exc}; while {action})") from exc
            raise SourceError(f"{where} failed while {action}: {exc}") from exc
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                raise SourceConfigError(
                    f"ssl_ca: the certificate of {where} cannot be verified ({text}): set `ssl_ca` to the CA that "
                    "signed it (its names must include the host)") from exc
            # TLS 1.3 servers check the client certificate after the handshake: the refusal is an
            # alert, or (as Redis does) a connection closed at the first command.
            if s.ssl_enabled and any(m in text.lower() for m in ("unknown ca", "certificate required",
                                                                  "bad certificate", "alert", "eof occurred")):
                field = "tls_certfile" if s.mutual_tls_enabled else "mutual_tls_enabled"
                raise SourceConfigError(f"{field}: {where} refused the client certificate ({text})") from exc
            if s.ssl_enabled and ("wrong version number" in text or "record layer failure" in text):
                raise SourceConfigError(f"ssl_enabled: {where} does not speak TLS on port {s.port} ({text})") from exc
            hint = " (is the port a TLS port? `ssl_enabled` is true)" if s.ssl_enabled and "imeout" in text else ""
            raise SourceUnavailable(f"host: cannot reach {where} while {action}: {text}{hint}") from exc
        except redis.exceptions.RedisError as exc:
            raise SourceError(f"{where} failed while {action}: {exc}") from exc

    # -- lifecycle -------------------------------------------------------------------
    async def ping(self) -> None:
        with self._errors("pinging the server"):
            self._client().ping()

    async def validate_config(self) -> None:
        """Check that every configured database exists (naming the ones that do not)."""
        wanted = self.settings.databases
        if wanted:
            self._check_databases(wanted, "database")

    def _check_databases(self, wanted: Sequence[int], field: str) -> None:
        count = self._database_count()
        if count is not None:
            missing = [n for n in wanted if n >= count]
        else:  # CONFIG GET not allowed: try each
            missing = []
            for number in wanted:
                try:
                    with self._errors(f"select database {number}", number):
                        self._client(number).ping()
                except SourceConfigError as exc:
                    if not str(exc).startswith("database:"):
                        raise
                    missing.append(number)
        if missing:
            has = f"has {count} databases (0 to {count - 1})" if count else "does not have them"
            raise SourceConfigError(f"{field}: database {', '.join(map(str, missing))} does not exist: "
                                    f"Redis at {self.settings.address} {has}")

    def _database_count(self) -> int | None:
        """``CONFIG GET databases`` (None when the user may not run it)."""
        try:
            with self._errors("read the number of databases (CONFIG GET databases)"):
                found = self._client().config_get("databases")
        except SourceConfigError as exc:
            if str(exc).startswith("username:"):
                return None
            raise
        value = found.get(b"databases", found.get("databases"))
        return int(value) if value is not None else None

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(Exception):
                client.close()
        for file in self._files.values():
            file.remove()

    # -- partitions ------------------------------------------------------------------
    def _databases(self) -> list[int]:
        """The configured databases, or with ``*`` those that hold keys."""
        configured = self.settings.databases
        if configured is not None:
            return list(configured)
        try:
            with self._errors("list the databases that hold keys (INFO keyspace)"):
                keyspace = self._client().info("keyspace")
        except SourceConfigError as exc:
            if not str(exc).startswith("username:"):
                raise
            count = self._database_count()
            if count is None:
                raise SourceConfigError(
                    f"database: `*` needs INFO keyspace or CONFIG GET databases to find the databases, and user "
                    f"`{self.settings.username or 'default'}` may run neither: list the database numbers") from exc
            return list(range(count))
        return sorted(int(name[2:]) for name in keyspace if str(name).startswith("db") and str(name)[2:].isdigit())

    def get_partitions(self) -> list[Partition]:
        databases = self._databases()
        return [Partition(f"db{number}", {"database": number, "first": i == 0, "planned": databases})
                for i, number in enumerate(databases)] or [Partition("none", {"first": True, "planned": []})]

    # -- reading ---------------------------------------------------------------------
    def validate_advanced_rules(self, advanced_rules: Any) -> list[str]:
        """Problems with a rules snippet, each naming its rule; databases are checked on the server
        when it answers."""
        problems = rule_problems(advanced_rules)
        if problems:
            return problems
        rules = parse_rules(advanced_rules)
        count = None
        with contextlib.suppress(SourceError):
            count = self._database_count()
        return [f"rule {n}: database {rule.database} does not exist: Redis at {self.settings.address} has "
                f"{count} databases (0 to {count - 1})"
                for n, rule in enumerate(rules, 1) if count is not None and rule.database >= count]

    def get_docs(self, filtering: Filter | None = None, partition: Partition | None = None) -> Iterator[Any]:
        """Every key of the partition's database (default: of every database), as ``(doc, None)``."""
        rules = self._rules(filtering)
        if partition is None or "planned" not in partition.params:
            plan = self.get_partitions()
        else:
            plan = [partition]
        for part in plan:
            for database, selected in self._reads(part.params, rules):
                for doc in self._read_database(database, selected):
                    yield doc, None

    @staticmethod
    def _rules(filtering: Filter | None) -> list[RedisRule] | None:
        if filtering is None or not Filter(filtering).has_advanced_rules():
            return None
        return parse_rules(Filter(filtering).get_advanced_rules())  # SyncRulesError naming each bad rule

    @staticmethod
    def _reads(params: Mapping[str, Any], rules: list[RedisRule] | None) -> list[tuple[int, list[RedisRule] | None]]:
        """What one partition reads: ``(database, its rules or None for every key)``.

        With rules, a partition reads the rules of its database; the first partition also
        reads the rules of databases no partition was planned for.
        """
        database = params.get("database")
        if rules is None:
            return [] if database is None else [(database, None)]
        reads = []
        if database is not None and any(r.database == database for r in rules):
            reads.append((database, [r for r in rules if r.database == database]))
        if params.get("first"):
            planned = set(params.get("planned") or ())
            for number in sorted({r.database for r in rules} - planned):
                reads.append((number, [r for r in rules if r.database == number]))
        return reads

    def _read_database(self, database: int, rules: list[RedisRule] | None) -> Iterator[Doc]:
        """The documents of ``database``: every key, or the keys the rules select (each once)."""
        scans: list[tuple[str | None, str | None]] = [(None, None)] if rules is None else \
            [(r.key_pattern, r.type) for r in rules]
        for number, (pattern, kind) in enumerate(scans):
            earlier = rules[:number] if rules else []
            for doc_key, key_type, doc in self._scan(database, pattern, kind):
                if any(rule.matches(doc_key, key_type) for rule in earlier):
                    continue  # an earlier rule read it
                yield doc

    def _scan(self, database: int, pattern: str | None, kind: str | None) -> Iterator[tuple[bytes, str, Doc]]:
        """SCAN ``database`` (MATCH ``pattern``, TYPE ``kind``) and read each batch of keys."""
        client, s = self._client(database), self.settings
        described = f"scan database {database}" + (f" for {pattern!r}" if pattern else "") + (
            f" of type {kind}" if kind else "")
        cursor: int = 0
        while True:
            with self._errors(described, database):
                cursor, keys = client.scan(cursor, match=pattern, count=s.batch_size, _type=kind)
            if keys:
                yield from self._read_keys(client, database, keys)
            if int(cursor) == 0:
                return

    def _read_keys(self, client: redis.Redis, database: int, keys: list[bytes]) -> Iterator[tuple[bytes, str, Doc]]:
        """Read a batch of keys in two pipelined round trips (types and sizes, then values)."""
        with self._errors(f"read the types of {len(keys)} keys of database {database}", database):
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.type(key)
                pipe.memory_usage(key)
            answers = pipe.execute()
        types = [_text(t) for t in answers[0::2]]
        sizes = answers[1::2]
        with self._errors(f"read the values of {len(keys)} keys of database {database}", database):
            pipe = client.pipeline(transaction=False)
            queued = [(key, key_type, size) for key, key_type, size in zip(keys, types, sizes)
                      if key_type != "none" and _queue_read(pipe, key, key_type)]
            values = pipe.execute(raise_on_error=False) if queued else []
        unknown = [(key, key_type, size) for key, key_type, size in zip(keys, types, sizes)
                   if key_type != "none" and not _queue_read(client.pipeline(transaction=False), key, key_type)]
        for key, key_type, size in unknown:
            self._logger.debug("key %r of database %d has type %s, which this source cannot read: value null",
                               key, database, key_type)
            yield key, key_type, document_of(database, key, key_type, None, size)
        for (key, key_type, size), raw in zip(queued, values):
            if isinstance(raw, redis.exceptions.ResponseError):
                if not str(raw).startswith("WRONGTYPE"):
                    with self._errors(f"read key {_text(key)!r} of database {database}", database):
                        raise raw
                found = self._read_again(client, database, key)
                if found is not None:
                    yield key, found[0], document_of(database, key, found[0], found[1], found[2])
                continue
            if not _gone(key_type, raw):
                yield key, key_type, document_of(database, key, key_type, raw, size)

    def _read_again(self, client: redis.Redis, database: int, key: bytes) -> tuple[str, Any, int | None] | None:
        """Type, value and size of a key whose type changed since it was listed (None: it is gone)."""
        for _ in range(_TYPE_RETRIES):
            with self._errors(f"read key {_text(key)!r} of database {database}", database):
                key_type = _text(client.type(key))
                if key_type == "none":
                    return None
                pipe = client.pipeline(transaction=False)
                if not _queue_read(pipe, key, key_type):
                    return key_type, None, client.memory_usage(key)
                pipe.memory_usage(key)
                raw, size = pipe.execute(raise_on_error=False)
            if isinstance(raw, redis.exceptions.ResponseError) and str(raw).startswith("WRONGTYPE"):
                continue
            if isinstance(raw, Exception):
                with self._errors(f"read key {_text(key)!r} of database {database}", database):
                    raise raw
            return None if _gone(key_type, raw) else (key_type, raw, size)
        raise SourceError(f"key {_text(key)!r} of database {database} changed type {_TYPE_RETRIES} times while it "
                          "was read; run the sync again")
