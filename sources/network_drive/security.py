"""Who may read a file on an SMB share, as Elasticsearch's document-level security wants it.

Two halves, both as Elastic's connectors shape them:

* a file's security descriptor (its DACL, read over SMB) becomes the identities allowed to
  read it, :func:`readers`, which the content document carries in ``_allow_access_control``;
* each user of the identity mappings (:func:`read_identity_mappings`: ``name;user SID;group
  SIDs``, the file Elastic's network drive connector reads for Linux/Samba servers) becomes
  one access-control document (:func:`access_control_document`): the user's identity and
  the DLS query template holding the user's access list.

Identities are prefixed as Elastic's framework does (``prefix:value``): ``sid:<SID>`` for
users and groups (the whole SID: on Samba a Unix user ``S-1-22-1-1001`` and a Unix group
``S-1-22-2-1001`` share their last part, so Elastic's ``rid:`` would confuse them),
``user:<name>`` for the user's name. Every user's list also holds Everyone (``S-1-1-0``)
and Authenticated Users (``S-1-5-11``), which every signed-in user belongs to.

An access-allowed ACE gives its SID the file when its mask includes reading the data
(``FILE_READ_DATA``/``FILE_LIST_DIRECTORY``, ``GENERIC_READ`` or ``GENERIC_ALL``); an
access-denied ACE that denies reading removes its SID (as Elastic's connector does: a deny
on a group does not remove members that another ACE allows). Inherit-only ACEs (which
apply to children, not to the object) are ignored. A file that nobody may read carries
``["none"]``: an empty list would leave the field out, which Elastic's DLS query treats as
readable by everyone.

Example usage::

    readers(descriptor)            # ["sid:S-1-22-2-1003", "sid:S-1-5-21-...-1001"]
    users = read_identity_mappings(Path("identities.csv"))
    access_control_document(users[0])  # {"_id": "S-1-5-21-...-1001", "identity": {...}, "query": {...}}
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sources.errors import SourceConfigError

__all__ = [
    "ACCESS_CONTROL_FIELD",
    "NO_ONE",
    "EVERYONE",
    "AUTHENTICATED_USERS",
    "IdentityMapping",
    "readers",
    "parse_identity_mappings",
    "access_control_document",
    "dls_query",
    "prefix_identity",
]

#: The field of a content document holding who may read it (Elastic's name).
ACCESS_CONTROL_FIELD = "_allow_access_control"
#: What a file nobody may read carries (no user's access list holds it).
NO_ONE = "none"
EVERYONE = "S-1-1-0"
AUTHENTICATED_USERS = "S-1-5-11"

_ALLOWED, _DENIED = 0x00, 0x01
_INHERIT_ONLY = 0x08
#: FILE_READ_DATA (FILE_LIST_DIRECTORY for a folder), GENERIC_ALL, GENERIC_READ
_READ_BITS = 0x00000001 | 0x10000000 | 0x80000000
_SID = re.compile(r"^S-1-\d+(-\d+)*$")

#: Elastic's DLS query (its connectors' ``es_access_control_query``): a document without
#: ``_allow_access_control`` is readable by all, else by the identities it lists.
_DLS_TEMPLATE = """{
  "bool": {
    "should": [
      {"bool": {"must_not": {"exists": {"field": "_allow_access_control"}}}},
      {"terms": {"_allow_access_control.enum": {{#toJson}}access_control{{/toJson}}}}
    ]
  }
}"""


def prefix_identity(prefix: str, identity: str) -> str:
    """``prefix:identity``, as Elastic's framework writes identities."""
    return f"{prefix}:{identity}"


def readers(aces: list[tuple[int, int, int, str]] | None) -> list[str]:
    """The identities allowed to read an object, from its DACL's ACEs ``(type, flags, mask, sid)``.

    ``None`` (no DACL at all) means everyone may; an empty DACL that nobody may (``[NO_ONE]``).
    """
    if aces is None:
        return [prefix_identity("sid", EVERYONE)]
    allowed: set[str] = set()
    denied: set[str] = set()
    for ace_type, flags, mask, sid in aces:
        if flags & _INHERIT_ONLY or not mask & _READ_BITS:
            continue
        if ace_type == _ALLOWED:
            allowed.add(sid)
        elif ace_type == _DENIED:
            denied.add(sid)
    identities = sorted(prefix_identity("sid", sid) for sid in allowed - denied)
    return identities or [NO_ONE]


@dataclass(frozen=True)
class IdentityMapping:
    """One user: name, SID and the SIDs of the groups the user belongs to."""

    name: str
    sid: str
    groups: tuple[str, ...] = ()


def parse_identity_mappings(text: str, where: str = "identity_mappings") -> list[IdentityMapping]:
    """Users from ``name;user SID;group SID,group SID`` lines (blank lines and ``#`` comments skipped).

    Raises :class:`SourceConfigError` naming the line and what was expected.
    """
    users: list[IdentityMapping] = []
    seen: set[str] = set()
    for number, row in enumerate(csv.reader(io.StringIO(text), delimiter=";"), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) not in (2, 3):
            raise SourceConfigError(f"{where}: line {number}: expected 'name;user SID;group SIDs', "
                                    f"got {len(row)} fields")
        name, sid = row[0].strip(), row[1].strip()
        groups = tuple(g.strip() for g in (row[2] if len(row) == 3 else "").split(",") if g.strip())
        if not name:
            raise SourceConfigError(f"{where}: line {number}: the user name is empty")
        for value in (sid, *groups):
            if not _SID.match(value):
                raise SourceConfigError(f"{where}: line {number}: expected a SID such as S-1-5-21-...-1001, "
                                        f"got {value!r}")
        if sid in seen:
            raise SourceConfigError(f"{where}: line {number}: user SID {sid} is listed twice")
        seen.add(sid)
        users.append(IdentityMapping(name, sid, groups))
    return users


def dls_query(access_control: list[str]) -> dict[str, Any]:
    """The ``query`` of an access-control document: Elastic's search template with the access list."""
    return {"template": {"source": _DLS_TEMPLATE, "params": {"access_control": list(access_control)}}}


def access_control_document(user: IdentityMapping, now: datetime | None = None) -> dict[str, Any]:
    """The user's document in ``.search-acl-filter-<index>``: identity and DLS query."""
    access = [prefix_identity("sid", user.sid), prefix_identity("user", user.name)]
    access += [prefix_identity("sid", group) for group in user.groups]
    access += [prefix_identity("sid", EVERYONE), prefix_identity("sid", AUTHENTICATED_USERS)]
    return {
        "_id": user.sid,
        "identity": {"username": prefix_identity("user", user.name), "user_id": prefix_identity("sid", user.sid)},
        "created_at": (now or datetime.now(timezone.utc)).isoformat(),
        "query": dls_query(list(dict.fromkeys(access))),
    }
