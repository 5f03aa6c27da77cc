"""What a source class says about itself: its configuration fields and its features.

One description, read from the class (its ``get_default_configuration()`` schema, completed
with the protocol's field defaults, and its feature flags), serves everyone who shows a
source to a person: ``elastic-ingest --action list --service-type T`` (table or ``--json``)
and the generated parts of ``docs/sources/<type>.md``, which a test compares with the
class, so the page cannot drift from the code.

Example usage::

    from sources.registry import load_source_class
    from sources.schema import describe_fields, features_of

    cls = load_source_class("sources.postgresql:PostgreSQLDataSource")
    for field in describe_fields(cls):
        print(field.name, field.type, field.must_be_given, field.description)
    features_of(cls)   # {"incremental_sync": True, "advanced_rules": True, ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sources.base import FIELD_DEFAULTS

__all__ = ["FieldInfo", "describe_fields", "features_of", "fields_markdown", "features_markdown"]


@dataclass(frozen=True)
class FieldInfo:
    """One configuration field, as a person needs to know it."""

    name: str
    label: str
    type: str
    default: Any
    #: The protocol's ``required`` flag (a default value satisfies it).
    required: bool
    sensitive: bool
    description: str
    #: ``{field: value}`` that must all hold for this field to be used and checked (``depends_on``).
    depends_on: dict[str, Any]
    #: Allowed values (``options``), empty when any value of the type goes.
    options: tuple[Any, ...]
    advanced: bool

    @property
    def must_be_given(self) -> bool:
        """Whether a connector must set it: required and without a default."""
        return self.required and self.default in (None, "", [])

    @property
    def shown_default(self) -> str:
        """The default as a person types it (``true``, ``a, b``), empty when there is none."""
        if self.default in (None, "", []):
            return ""
        if isinstance(self.default, list):
            return ", ".join(str(v) for v in self.default)
        return str(self.default).lower() if isinstance(self.default, bool) else str(self.default)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "options": list(self.options), "must_be_given": self.must_be_given}


def describe_fields(cls: type) -> list[FieldInfo]:
    """The fields of ``cls``'s configuration schema, in the order a form shows them."""
    schema = cls.get_default_configuration() if hasattr(cls, "get_default_configuration") else {}
    fields = []
    for name, spec in schema.items():
        full = {**FIELD_DEFAULTS, **(spec if isinstance(spec, Mapping) else {})}
        depends = {d.get("field"): d.get("value") for d in full.get("depends_on") or [] if isinstance(d, Mapping)}
        options = tuple(o.get("value", o) if isinstance(o, Mapping) else o for o in full.get("options") or [])
        fields.append(FieldInfo(
            name=name, label=str(full.get("label") or name), type=str(full.get("type") or "str"),
            default=full.get("default_value"), required=bool(full.get("required", True)),
            sensitive=bool(full.get("sensitive")), description=" ".join(str(full.get("tooltip") or "").split()),
            depends_on=depends, options=options, advanced="advanced" in (full.get("ui_restrictions") or []),
        ))
    order = {name: int((schema[name] or {}).get("order") or 0) if isinstance(schema[name], Mapping) else 0
             for name in schema}
    return sorted(fields, key=lambda f: order[f.name])  # stable: declaration order among equals


def features_of(cls: type) -> dict[str, bool]:
    """Which kinds of syncs and rules ``cls`` supports (its class flags)."""
    from sources.base import supports_access_control

    return {
        "incremental_sync": bool(getattr(cls, "incremental_sync_enabled", False)),
        "advanced_rules": bool(getattr(cls, "advanced_rules_enabled", False)),
        "document_level_security": supports_access_control(cls),
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fields_markdown(cls: type) -> str:
    """The fields of ``cls`` as a Markdown table (the generated part of docs/sources/<type>.md)."""
    lines = ["| field | label | type | default | required | sensitive | description |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in describe_fields(cls):
        required = "yes" if f.must_be_given else "no"
        if f.depends_on and f.must_be_given:
            required = "if " + ", ".join(f"`{k}` is {str(v).lower()}" for k, v in f.depends_on.items())
        description = f.description
        if f.depends_on and not f.must_be_given:
            description = (f"(used when {', '.join(f'`{k}` is {str(v).lower()}' for k, v in f.depends_on.items())}) "
                           + description).strip()
        default = f.shown_default
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"`{f.name}`", f.label, f.type, f"`{default}`" if default else "", required,
            "yes" if f.sensitive else "", description)) + " |")
    return "\n".join(lines)


def features_markdown(cls: type) -> str:
    """What ``cls`` supports, one line per feature (generated part of docs/sources/<type>.md)."""
    features = features_of(cls)
    partitions = "get_partitions" in _defined_methods(cls)
    return "\n".join([
        f"- incremental syncs: {'yes' if features['incremental_sync'] else 'no'}",
        f"- advanced sync rules: {'yes' if features['advanced_rules'] else 'no'} "
        "(basic sync rules: yes, applied by the service)",
        f"- document-level security (access-control syncs): {'yes' if features['document_level_security'] else 'no'}",
        f"- parallel partitions: {'yes' if partitions else 'no (one partition)'}",
        f"- continuous sync (change capture, `continuous_sync`): {'yes' if _streams(cls) else 'no'}",
    ])


def _streams(cls: type) -> bool:
    from sources.streaming import supports_continuous_sync

    return supports_continuous_sync(cls)


def _defined_methods(cls: type) -> set[str]:
    """Names defined by ``cls`` or a base class other than the contract's BaseDataSource."""
    from sources.base import BaseDataSource

    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in (BaseDataSource, object):
            continue
        names.update(klass.__dict__)
    return names
