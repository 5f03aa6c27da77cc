"""A connector's ``configuration`` object (PROTOCOL.md section 4): complete it, validate it.

* :func:`complete_configuration` adds the fields a source declares that the document
  lacks, and fills missing properties of existing fields with the defaults;
* :func:`validate_configuration` checks values (required, types, ``depends_on``,
  ``validations``) and returns every problem, by field label;
* :func:`missing_required` names the required fields still without a value;
* :func:`redact` hides sensitive values for printing.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from sources.base import FIELD_DEFAULTS

__all__ = ["complete_configuration", "validate_configuration", "missing_required", "redact", "coerce_value",
           "values_of", "typed_fields", "without_secrets", "with_secrets"]

_TYPES = {"str", "int", "bool", "list"}


def complete_configuration(current: Any, schema: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The configuration with every schema field and property present; and whether it changed."""
    result: dict[str, Any] = copy.deepcopy(current) if isinstance(current, Mapping) else {}
    changed = not isinstance(current, Mapping)
    for name, spec in schema.items():
        full = {**FIELD_DEFAULTS, **copy.deepcopy(spec)}
        if name not in result or not isinstance(result[name], Mapping):
            if "value" not in spec:
                full["value"] = full.get("default_value") if full.get("default_value") is not None else ""
            result[name] = full
            changed = True
            continue
        for prop, default in full.items():
            if prop not in result[name]:
                result[name][prop] = copy.deepcopy(default)
                changed = True
    return result, changed


def coerce_value(value: Any, kind: str) -> Any:
    """A field value as its declared ``type``; raises ValueError saying what was expected."""
    if value is None:
        return None
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"expected true or false, got {value!r}")
    if kind == "list":
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        raise ValueError(f"expected a list or a comma-separated string, got {type(value).__name__}")
    if isinstance(value, (dict, list)):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


def _label(name: str, spec: Mapping[str, Any]) -> str:
    return str(spec.get("label") or name)


def _shown(spec: Mapping[str, Any], value: Any) -> str:
    return "****" if spec.get("sensitive") else repr(value)


def _check_validation(rule: Any, value: Any, label: str, spec: Mapping[str, Any]) -> str | None:
    if not isinstance(rule, Mapping):
        return f"{label}: a validation must be an object, got {rule!r}"
    kind, constraint = rule.get("type"), rule.get("constraint")
    try:
        if kind == "less_than" and not value < constraint:
            return f"{label}: must be less than {constraint}, got {_shown(spec, value)}"
        if kind == "greater_than" and not value > constraint:
            return f"{label}: must be greater than {constraint}, got {_shown(spec, value)}"
        if kind == "included_in":
            values = value if isinstance(value, list) else [value]
            bad = [v for v in values if v not in (constraint or [])]
            if bad:
                return f"{label}: {', '.join(map(str, bad))} not one of {', '.join(map(str, constraint or []))}"
        if kind == "list_type":
            wanted = {"int": int, "str": str}.get(str(constraint))
            if wanted and any(not isinstance(v, wanted) for v in (value or [])):
                return f"{label}: every item must be {constraint}"
        if kind == "regex":
            if not re.fullmatch(str(constraint), str(value)):
                return f"{label}: does not match {constraint}"
    except TypeError:
        return f"{label}: cannot compare {_shown(spec, value)} with {constraint!r}"
    return None


def validate_configuration(configuration: Any) -> list[str]:
    """Every problem with the values, as ``"<label>: <what is wrong>"``; empty when valid."""
    if not isinstance(configuration, Mapping):
        return [f"configuration: expected an object, got {type(configuration).__name__}"]
    problems: list[str] = []
    applies = _applicability(configuration)
    for name, spec in sorted(configuration.items(), key=lambda kv: (kv[1] or {}).get("order", 0)
                             if isinstance(kv[1], Mapping) else 0):
        if not isinstance(spec, Mapping):
            problems.append(f"{name}: expected a field object with a value, got {type(spec).__name__}")
            continue
        label = _label(name, spec)
        if not applies(spec):
            continue  # validated only when every field it depends on has the given value
        kind = spec.get("type", "str")
        if kind not in _TYPES:
            problems.append(f"{label}: unknown type {kind!r} (expected one of {', '.join(sorted(_TYPES))})")
            continue
        value = _given(spec)
        if value in (None, "", []):
            if spec.get("required", True):
                problems.append(f"{label}: a value is required")
            continue
        try:
            value = coerce_value(value, kind)
        except ValueError as exc:
            problems.append(f"{label}: {exc}" if not spec.get("sensitive")
                            else f"{label}: expected a value of type {kind}")
            continue
        for rule in spec.get("validations") or []:
            problem = _check_validation(rule, value, label, spec)
            if problem:
                problems.append(problem)
    return problems


def missing_required(configuration: Mapping[str, Any]) -> list[str]:
    """The names of the required fields that have no value (nor default), in form order;
    a field that ``depends_on`` others counts only when they have the given values."""
    applies = _applicability(configuration)
    fields = sorted(((name, spec) for name, spec in configuration.items() if isinstance(spec, Mapping)),
                    key=lambda kv: kv[1].get("order", 0) or 0)
    return [name for name, spec in fields
            if spec.get("required", True) and applies(spec) and _given(spec) in (None, "", [])]


def _given(spec: Mapping[str, Any]) -> Any:
    """A field's value, or its default when it has none."""
    value = spec.get("value")
    if value in (None, "", []) and spec.get("default_value") not in (None, ""):
        value = spec.get("default_value")
    return value


def _applicability(configuration: Mapping[str, Any]) -> Any:
    """Whether a field applies: every field it ``depends_on`` has the given value (raw or typed)."""
    raw = {name: spec.get("value") for name, spec in configuration.items() if isinstance(spec, Mapping)}
    typed = values_of(configuration)

    def applies(spec: Mapping[str, Any]) -> bool:
        depends = spec.get("depends_on") or []
        return not (isinstance(depends, list) and any(
            isinstance(d, Mapping) and d.get("value") not in (raw.get(d.get("field")), typed.get(d.get("field")))
            for d in depends))

    return applies


def values_of(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: value}`` with values coerced to their types (defaults where empty)."""
    out: dict[str, Any] = {}
    for name, spec in configuration.items():
        if not isinstance(spec, Mapping):
            continue
        value = spec.get("value")
        if value in (None, "") and spec.get("default_value") is not None:
            value = spec.get("default_value")
        try:
            out[name] = coerce_value(value, spec.get("type", "str")) if value not in (None, "") else value
        except ValueError:
            out[name] = value
    return out


def typed_fields(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration (field objects) with each field's value converted to its declared type."""
    typed = values_of(configuration)
    return {name: ({**spec, "value": typed.get(name)} if isinstance(spec, dict) else spec)
            for name, spec in configuration.items()}


def redact(configuration: Any) -> Any:
    """A copy with sensitive values replaced by ``****`` (a reference, ``${env:NAME}``, is shown)."""
    from launcher.secret_refs import is_reference

    if not isinstance(configuration, Mapping):
        return configuration
    result = copy.deepcopy(dict(configuration))
    for spec in result.values():
        if (isinstance(spec, dict) and spec.get("sensitive") and spec.get("value") not in (None, "")
                and not is_reference(spec.get("value"))):
            spec["value"] = "****"
    return result


def without_secrets(configuration: Any) -> Any:
    """A copy with sensitive values removed (``None``): what a job document keeps of them.

    The service reads them back from the connector document when it runs the job
    (:func:`with_secrets`), so secrets live in one document only.
    """
    if not isinstance(configuration, Mapping):
        return configuration
    result = copy.deepcopy(dict(configuration))
    for spec in result.values():
        if isinstance(spec, dict) and spec.get("sensitive") and spec.get("value") not in (None, ""):
            spec["value"] = None
    return result


def with_secrets(configuration: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """``configuration`` with its missing sensitive values taken from ``live`` (the connector's)."""
    result = copy.deepcopy(dict(configuration))
    for name, spec in result.items():
        source = live.get(name)
        if (isinstance(spec, dict) and spec.get("sensitive") and spec.get("value") in (None, "")
                and isinstance(source, Mapping)):
            spec["value"] = copy.deepcopy(source.get("value"))
    return result
