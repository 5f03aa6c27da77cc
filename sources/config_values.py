"""Read a source's configuration values, collecting every problem instead of raising.

Sources parse their ``configuration`` into typed settings once; these readers coerce one
value each and append ``"<field>: <what is wrong>"`` to ``problems``, so a source can
report every mistake at once (then raise ``SourceConfigError``).

Example usage::

    problems: list[str] = []
    host = read_text(config, "host", problems)
    port = read_int(config, "port", problems, default=5432)
    if problems:
        raise SourceConfigError("invalid configuration: " + "; ".join(problems))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["read_text", "read_int", "read_flag", "read_url", "read_names"]

_TRUE = ("1", "true", "yes", "on")


def read_text(config: Mapping[str, Any], name: str, problems: list[str], *, required: bool = True) -> str:
    """A stripped string ("" when empty); a required empty value is a problem."""
    value = config.get(name)
    value = "" if value is None else str(value).strip()
    if required and not value:
        problems.append(f"{name}: required")
    return value


def read_flag(config: Mapping[str, Any], name: str) -> bool:
    """A boolean; strings such as "true", "yes", "on", "1" count as true."""
    value = config.get(name)
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


def read_int(config: Mapping[str, Any], name: str, problems: list[str], *, minimum: int = 1,
             maximum: int | None = None, default: int | None = None) -> int:
    """A whole number within bounds; empty means ``default`` (or the field's ``default_value``)."""
    value = config.get(name)
    if default is None and hasattr(config, "field") and name in config:
        schema_default = config.field(name).get("default_value")
        default = schema_default if isinstance(schema_default, int) else None
    if value in (None, ""):
        return default if default is not None else minimum
    try:
        number = int(str(value).strip())
    except ValueError:
        problems.append(f"{name}: expected a whole number, got {value!r}")
        return default if default is not None else minimum
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        problems.append(f"{name}: must be {bounds}, got {number}")
    return number


def read_url(config: Mapping[str, Any], name: str, problems: list[str], fallback: str = "") -> str | None:
    """An optional http(s) URL; a bare ``host:port`` (as in emulator variables) means http."""
    url = str(config.get(name) or "").strip() or fallback.strip()
    if not url:
        return None
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        problems.append(f"{name}: must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


def read_names(config: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A list of names, given as a list or a comma-separated string; blanks dropped."""
    raw = config.get(name)
    if isinstance(raw, str):
        raw = raw.split(",")
    return tuple(str(item).strip() for item in (raw or ()) if str(item).strip())
