"""Advanced sync rules of the redis source, as Elastic's Redis connector has them.

A rules snippet is a list of rules; each reads the keys of one database that match a key
pattern, a type, or both::

    [{"database": 0, "key_pattern": "user:*"},
     {"database": 0, "type": "HASH"},
     {"database": 3, "key_pattern": "session:[0-9]*", "type": "string"}]

* ``database`` (required): a database number, 0 or more;
* ``key_pattern``: a Redis glob (``*``, ``?``, ``[abc]``, ``[^a]``, ``[a-z]``, ``\\`` escapes),
  pushed down as ``SCAN ... MATCH``;
* ``type``: ``string``, ``hash``, ``list``, ``set``, ``zset``, ``stream`` or ``ReJSON-RL``
  (a RedisJSON value; ``json`` is accepted for it), any case, pushed down as
  ``SCAN ... TYPE``. Elastic's documentation writes it ``type_``; both are accepted.

At least one of ``key_pattern`` and ``type`` is required, and no other key. With rules,
the ``database`` field of the configuration is ignored (as in Elastic's connector): the
rules name the databases. A key matched by two rules is read once (by the first).

Example usage::

    rules = parse_rules([{"database": 0, "key_pattern": "user:*"}])   # SyncRulesError if invalid
    rules[0].matches(b"user:1", "hash")                              # True
    rule_problems([{"database": "x"}])    # ["rule 1: `database` must be a whole number of 0 or more, got 'x'"]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sources.errors import SyncRulesError

__all__ = ["RedisRule", "parse_rules", "rule_problems", "rules_of", "glob_regex", "KEY_TYPES"]

#: The types a rule may name (lower case) -> the name Redis gives them (TYPE, SCAN TYPE).
KEY_TYPES = {"string": "string", "hash": "hash", "list": "list", "set": "set", "zset": "zset",
             "stream": "stream", "rejson-rl": "ReJSON-RL", "json": "ReJSON-RL"}
_KEYS = ("database", "key_pattern", "type", "type_")
_EXAMPLE = '[{"database": 0, "key_pattern": "user:*", "type": "HASH"}]'


@dataclass(frozen=True)
class RedisRule:
    """One rule: the keys of ``database`` matching ``key_pattern`` (None: all) of ``type`` (None: any)."""

    database: int
    key_pattern: str | None
    type: str | None

    def matches(self, key: bytes, key_type: str) -> bool:
        """Whether this rule selects ``key`` of type ``key_type`` (as SCAN MATCH/TYPE would)."""
        if self.type is not None and key_type.lower() != self.type.lower():
            return False
        return self.key_pattern is None or glob_regex(self.key_pattern).fullmatch(key) is not None

    def describe(self) -> str:
        parts = [f"database {self.database}"]
        if self.key_pattern is not None:
            parts.append(f"key_pattern {self.key_pattern!r}")
        if self.type is not None:
            parts.append(f"type {self.type}")
        return ", ".join(parts)


def rules_of(snippet: Any) -> Any:
    """The rules, whether given bare or as an advanced snippet object ``{"value": [...]}``."""
    if isinstance(snippet, Mapping) and "value" in snippet and "database" not in snippet:
        return snippet["value"]
    return snippet


def rule_problems(snippet: Any) -> list[str]:
    """Every problem of a rules snippet, each naming its rule (empty: valid)."""
    rules = rules_of(snippet)
    if rules in (None, {}, []):
        return []
    if not isinstance(rules, list):
        return [f"advanced rules must be a list of rules like {_EXAMPLE}, got {type(rules).__name__}"]
    problems: list[str] = []
    for number, rule in enumerate(rules, 1):
        if not isinstance(rule, Mapping):
            problems.append(f"rule {number}: expected an object like {_EXAMPLE[1:-1]}, got {rule!r}")
            continue
        unknown = sorted(str(k) for k in rule if k not in _KEYS)
        if unknown:
            problems.append(f"rule {number}: unknown keys {', '.join(unknown)}; allowed: database, key_pattern, type")
        database = rule.get("database")
        if "database" not in rule:
            problems.append(f"rule {number}: `database` is required (a database number, e.g. 0)")
        elif isinstance(database, bool) or not isinstance(database, int) or database < 0:
            problems.append(f"rule {number}: `database` must be a whole number of 0 or more, got {database!r}")
        if "type" in rule and "type_" in rule:
            problems.append(f"rule {number}: give `type` or `type_`, not both")
        pattern, kind = rule.get("key_pattern"), rule.get("type", rule.get("type_"))
        if pattern is None and kind is None:
            problems.append(f"rule {number}: give `key_pattern`, `type` or both")
        if pattern is not None and (not isinstance(pattern, str) or not pattern):
            problems.append(f"rule {number}: `key_pattern` must be a non-empty string, got {pattern!r}")
        if kind is not None and (not isinstance(kind, str) or kind.lower() not in KEY_TYPES):
            problems.append(f"rule {number}: `type` must be one of HASH, LIST, SET, STREAM, STRING, ZSET or "
                            f"ReJSON-RL, got {kind!r}")
    return problems


def parse_rules(snippet: Any) -> list[RedisRule]:
    """The rules of a snippet (empty: none); SyncRulesError listing every problem."""
    problems = rule_problems(snippet)
    if problems:
        raise SyncRulesError("invalid advanced sync rules for Redis: " + "; ".join(problems))
    rules = rules_of(snippet) or []
    parsed = []
    for rule in rules:
        kind = rule.get("type", rule.get("type_"))
        parsed.append(RedisRule(int(rule["database"]), rule.get("key_pattern"),
                                KEY_TYPES[kind.lower()] if kind is not None else None))
    return parsed


_GLOBS: dict[str, re.Pattern[bytes]] = {}


def glob_regex(pattern: str) -> re.Pattern[bytes]:
    """The regular expression (on the key's bytes) of a Redis glob, as Redis's ``stringmatchlen`` reads it."""
    found = _GLOBS.get(pattern)
    if found is not None:
        return found
    raw, out, i = pattern.encode("utf-8"), [], 0
    while i < len(raw):
        char = raw[i:i + 1]
        if char == b"*":
            out.append(b".*")
        elif char == b"?":
            out.append(b".")
        elif char == b"\\" and i + 1 < len(raw):
            i += 1
            out.append(re.escape(raw[i:i + 1]))
        elif char == b"[":
            i += 1
            negate = raw[i:i + 1] == b"^"
            if negate:
                i += 1
            members: list[bytes] = []
            while i < len(raw) and raw[i:i + 1] != b"]":
                if raw[i:i + 1] == b"\\" and i + 1 < len(raw):
                    i += 1
                    members.append(re.escape(raw[i:i + 1]))
                elif i + 2 < len(raw) and raw[i + 1:i + 2] == b"-" and raw[i + 2:i + 3] != b"]":
                    low, high = sorted((raw[i], raw[i + 2]))
                    members.append(re.escape(bytes([low])) + b"-" + re.escape(bytes([high])))
                    i += 2
                else:
                    members.append(re.escape(raw[i:i + 1]))
                i += 1
            if not members:  # "[]" matches nothing, "[^]" any one byte
                out.append(b"." if negate else b"(?!)")
            else:
                out.append(b"[" + (b"^" if negate else b"") + b"".join(members) + b"]")
        else:
            out.append(re.escape(char))
        i += 1
    compiled = re.compile(b"".join(out), re.S)
    if len(_GLOBS) > 256:
        _GLOBS.clear()
    _GLOBS[pattern] = compiled
    return compiled
