"""Basic sync rules (PROTOCOL.md section 5): validate them, and decide per document.

A rule is ``{id, policy: include|exclude, field, rule, value, order}`` with ``rule`` one of
``equals``, ``starts_with``, ``ends_with``, ``contains``, ``regex``, ``>``, ``<``. Rules are
tried by ``order`` (the catch-all ``DEFAULT`` rule left out); the first that matches decides;
no match means include; a missing field never matches; the rule's value is compared as the
document value's type.

Example usage::

    rules = BasicRules([{"id": "1", "policy": "exclude", "field": "ext", "rule": "equals",
                         "value": ".tmp", "order": 1}])
    rules.should_index({"ext": ".tmp"})   # False
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = ["BasicRules", "validate_rules", "RULES", "POLICIES", "DEFAULT_RULE_ID"]

RULES = ("equals", "starts_with", "ends_with", "contains", "regex", ">", "<")
POLICIES = ("include", "exclude")
DEFAULT_RULE_ID = "DEFAULT"
_MATCH_ALL = {".*", "^.*$", ".*$", "^.*", ".+", "(.*)"}


def validate_rules(rules: Any) -> list[dict[str, Any]]:
    """Problems with a list of basic rules, as ``[{"ids": [...], "messages": [...]}]`` (empty: valid)."""
    errors: list[dict[str, Any]] = []
    if not isinstance(rules, list):
        return [{"ids": [], "messages": [f"rules: expected a list, got {type(rules).__name__}"]}]
    seen: dict[tuple[Any, Any, str], str] = {}
    for index, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            errors.append({"ids": [], "messages": [f"rule {index}: expected an object, got {type(rule).__name__}"]})
            continue
        rule_id = str(rule.get("id", f"#{index}"))
        messages: list[str] = []
        for key in ("id", "policy", "field", "rule", "value", "order"):
            if rule.get(key) in (None, ""):
                messages.append(f"rule {rule_id}: `{key}` is required")
        if rule.get("policy") not in (None, "") and rule.get("policy") not in POLICIES:
            messages.append(f"rule {rule_id}: policy must be one of {', '.join(POLICIES)}, got {rule.get('policy')!r}")
        if rule.get("rule") not in (None, "") and rule.get("rule") not in RULES:
            messages.append(f"rule {rule_id}: rule must be one of {', '.join(RULES)}, got {rule.get('rule')!r}")
        if rule.get("order") not in (None, "") and not isinstance(rule.get("order"), int):
            messages.append(f"rule {rule_id}: order must be an integer, got {rule.get('order')!r}")
        if rule.get("rule") == "regex" and isinstance(rule.get("value"), str):
            try:
                re.compile(rule["value"])
            except re.error as exc:
                messages.append(f"rule {rule_id}: invalid regex {rule['value']!r}: {exc}")
            if rule_id != DEFAULT_RULE_ID and rule["value"].strip() in _MATCH_ALL:
                messages.append(f"rule {rule_id}: a match-all regex is only allowed in the DEFAULT rule")
        if not messages and rule_id != DEFAULT_RULE_ID:
            key = (rule.get("field"), rule.get("rule"), str(rule.get("value")))
            if key in seen:
                messages.append(f"rules {seen[key]} and {rule_id} have the same field, rule and value")
            seen[key] = rule_id
        if messages:
            errors.append({"ids": [rule_id], "messages": messages})
    return errors


def _coerce(rule_value: Any, doc_value: Any) -> Any:
    """The rule's value as the document value's type (rules store values as strings)."""
    if isinstance(doc_value, bool):
        return str(rule_value).strip().lower() in ("true", "1", "yes")
    if isinstance(doc_value, int):
        return int(float(rule_value))
    if isinstance(doc_value, float):
        return float(rule_value)
    if isinstance(doc_value, datetime):
        return datetime.fromisoformat(str(rule_value))
    return str(rule_value)


def _get(doc: Mapping[str, Any], field: str) -> tuple[bool, Any]:
    value: Any = doc
    for part in field.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return False, None
    return True, value


class BasicRules:
    """Compiled basic rules; picklable, cheap to evaluate per document."""

    def __init__(self, rules: Sequence[Mapping[str, Any]] | None):
        active = [dict(r) for r in (rules or []) if str(r.get("id")) != DEFAULT_RULE_ID]
        self.rules = sorted(active, key=lambda r: r.get("order", 0))
        self._regexes = {i: re.compile(r["value"]) for i, r in enumerate(self.rules) if r.get("rule") == "regex"}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _matches(self, index: int, rule: Mapping[str, Any], doc: Mapping[str, Any]) -> bool:
        present, value = _get(doc, rule["field"])
        if not present or value is None:
            return False
        kind = rule["rule"]
        if kind == "regex":
            return self._regexes[index].search(str(value)) is not None
        if kind in ("starts_with", "ends_with", "contains"):
            text, needle = str(value), str(rule["value"])
            return {
                "starts_with": text.startswith,
                "ends_with": text.endswith,
                "contains": text.__contains__,
            }[kind](needle)
        try:
            expected = _coerce(rule["value"], value)
        except (TypeError, ValueError):
            return False
        if kind == "equals":
            return value == expected
        try:
            return value > expected if kind == ">" else value < expected
        except TypeError:
            return False

    def should_index(self, doc: Mapping[str, Any]) -> bool:
        for index, rule in enumerate(self.rules):
            if self._matches(index, rule, doc):
                return rule["policy"] == "include"
        return True
