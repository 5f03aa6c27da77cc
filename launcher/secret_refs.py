"""Secret references: a sensitive connector field may name where its secret is, not hold it.

A connector document is readable by whoever can read ``.elastic-connectors``. When the
operator wants secrets out of it, the value of a field marked ``sensitive`` may be a
reference, resolved by the service in its own process (the daemon, when it checks the
connector and when it starts a sync), never written back to Elasticsearch:

    ${env:NAME}          the service's environment variable NAME
    ${file:/abs/path}    the content of that file (one final newline dropped)

Only what the operator allows in config.yml resolves (a connector document must not be
able to send the service's own credentials to a host of its choosing)::

    secrets:
      env: [PG_PASSWORD, "MYSQL_*"]     # names or fnmatch patterns
      folders: [/run/secrets]           # files below these folders (symlinks resolved)

Values of fields that are not sensitive are never resolved (they stay as written).

Example usage::

    resolved = resolve_references(connector_configuration, config.secrets)
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
from collections.abc import Mapping
from typing import Any

from launcher.config import SecretsConfig
from sources.errors import SecretReferenceError

__all__ = ["env_reference", "is_reference", "reference_problem", "resolve_references", "MAX_SECRET_FILE_BYTES"]

_REFERENCE = re.compile(r"^\$\{(env|file):([^}]*)\}$")
MAX_SECRET_FILE_BYTES = 64 * 1024


def env_reference(name: str) -> str:
    """The reference to environment variable ``name``: ``${env:NAME}``."""
    return "${env:" + name + "}"


def is_reference(value: Any) -> bool:
    return isinstance(value, str) and _REFERENCE.match(value.strip()) is not None


def _allowed_file(path: str, folders: list[str]) -> str | None:
    """``path`` resolved, if it lies below one of ``folders`` (resolved too); else None."""
    if not os.path.isabs(path):
        return None
    real = os.path.realpath(path)
    for folder in folders:
        root = os.path.realpath(folder).rstrip(os.sep) + os.sep
        if real.startswith(root):
            return real
    return None


def reference_problem(value: str, secrets: SecretsConfig) -> str | None:
    """Why the operator does not allow this reference (None: allowed). Reads nothing."""
    match = _REFERENCE.match(value.strip())
    if match is None:
        return f"{value!r} is not a reference; expected ${{env:NAME}} or ${{file:/path}}"
    kind, target = match.groups()
    if kind == "env":
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", target):
            return f"${{env:{target}}}: expected an environment variable name"
        if not any(fnmatch.fnmatchcase(target, pattern) for pattern in secrets.env):
            return (f"${{env:{target}}} is not allowed: config.yml secrets.env does not list {target} "
                    "(the operator lists the variables connectors may name)")
        return None
    if _allowed_file(target, secrets.folders) is None:
        return (f"${{file:{target}}} is not allowed: the file must be named by an absolute path below a folder "
                "listed in config.yml secrets.folders")
    return None


def _resolve(value: str, secrets: SecretsConfig) -> str:
    problem = reference_problem(value, secrets)
    if problem is not None:
        raise SecretReferenceError(problem)
    kind, target = _REFERENCE.match(value.strip()).groups()  # type: ignore[union-attr]
    if kind == "env":
        if target not in os.environ:
            raise SecretReferenceError(f"${{env:{target}}}: the service's environment has no variable {target}")
        return os.environ[target]
    path = _allowed_file(target, secrets.folders)
    try:
        with open(path, "rb") as file:  # type: ignore[arg-type]
            data = file.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise SecretReferenceError(f"${{file:{target}}}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecretReferenceError(f"${{file:{target}}}: larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretReferenceError(f"${{file:{target}}}: not UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text


def resolve_references(configuration: Mapping[str, Any], secrets: SecretsConfig) -> dict[str, Any]:
    """A copy of ``configuration`` with the references of sensitive fields replaced by their secrets.

    Raises SecretReferenceError naming the field (by label) and the reference, never a secret.
    """
    result = copy.deepcopy(dict(configuration))
    problems = []
    for name, spec in result.items():
        if not (isinstance(spec, dict) and spec.get("sensitive") and is_reference(spec.get("value"))):
            continue
        try:
            spec["value"] = _resolve(spec["value"], secrets)
        except SecretReferenceError as exc:
            problems.append(f"{spec.get('label') or name}: {exc}")
    if problems:
        raise SecretReferenceError("; ".join(problems))
    return result
