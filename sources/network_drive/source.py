"""The network drive source: files and folders of an SMB share (Windows, Samba) as documents.

Configured as Elastic's network drive connector (``username``, ``password``, ``server_ip``,
``server_port``, ``drive_path``, ``use_document_level_security``, ``identity_mappings``);
read with smbprotocol's ``smbclient``. Each file and folder below ``drive_path`` is one
document shaped as Elastic's: ``_id`` (the server's file id), ``path`` (UNC,
``\\\\server\\share\\folder\\file``), ``title`` (its name), ``type`` (``file`` or ``folder``),
``size``, ``created_at`` and ``_timestamp`` (the change time, which moves when the content,
the name or the permissions change: an unchanged file is neither downloaded nor sent again).
A file's content is downloaded lazily, only when it is new or changed, and becomes ``body``
(text files) or ``_attachment`` (the pipeline extracts the text), as the ``dir`` source's.

Partitions are the top-level folders of ``drive_path`` (plus the entries at its top).
A folder the account cannot list fails the read (nothing is deleted); a file it cannot
open is a dead letter (:class:`~sources.errors.DocumentUnreadable`) and the sync goes on.

Advanced sync rules are Elastic's: ``[{"pattern": "<glob>"}]``, each matched (``**``
allowed) against folder paths written ``share/folder/sub``; what lies below a matching
folder is indexed, the rest is not.

With ``use_document_level_security``, each document carries ``_allow_access_control``, the
identities its security descriptor allows to read it, and access-control syncs write one
document per user of ``identity_mappings`` (:mod:`sources.network_drive.security`). Samba
reports the write time as the change time, so a permission change moves no time: with DLS
on, the ``_id`` is the file id followed by a digest of the readers (``5530968-1f0c...``), and
a permission change replaces the document (the old one is deleted by the same sync).

Example usage::

    source = NetworkDriveDataSource({"username": "smbingest", "password": "...",
                                     "server_ip": "127.0.0.1", "server_port": 1445, "drive_path": "ingest"})
    for doc, download in source.get_docs():
        ...
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import field_validator
from wcmatch import glob as wcglob

from sources.base import BaseDataSource, Endpoint, Filter, OperatorSettings, Partition, config_folder
from sources.config_values import read_flag, read_int, read_text
from sources.errors import DocumentUnreadable, IngestError, SourceConfigError, SourceError, SourceUnavailable
from sources.file_content import content_fields, file_suffix
from sources.folders import absolute_folders, within
from sources.network_drive.security import (
    ACCESS_CONTROL_FIELD,
    NO_ONE,
    access_control_document,
    parse_identity_mappings,
    readers,
)

__all__ = ["NetworkDriveDataSource", "NetworkDriveSettings"]

_DIRECTORY = 0x10
_REPARSE_POINT = 0x400
_READ_CONTROL = 0x00020000
_READ_DATA = 0x00000001
_READ_ATTRIBUTES = 0x00000080
_SECURITY_INFO_DACL = 0x00000004
_CHUNK = 1 << 20


class NetworkDriveSettings(OperatorSettings):
    """What the operator allows the network drive source (config.yml)."""

    #: Absolute folders the connectors' ``identity_mappings`` files may lie in; none: DLS refused.
    identity_roots: tuple[str, ...] = ()

    @field_validator("identity_roots")
    @classmethod
    def _absolute(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return absolute_folders(value)


@dataclass(frozen=True)
class _Settings:
    username: str
    password: str = field(repr=False)
    server: str
    port: int
    share: str
    folder: tuple[str, ...]
    dls: bool
    identity_mappings: str

    @property
    def root(self) -> str:
        """The UNC path of ``drive_path``."""
        return "\\\\" + "\\".join((self.server, self.share, *self.folder))


def _settings(config: Any) -> _Settings:
    problems: list[str] = []
    username = read_text(config, "username", problems)
    password = str(config.get("password") or "")
    server = read_text(config, "server_ip", problems)
    port = read_int(config, "server_port", problems, maximum=65535, default=445)
    drive = read_text(config, "drive_path", problems).replace("\\", "/").strip("/")
    parts = tuple(part for part in drive.split("/") if part)
    if drive and (not parts or any(part in (".", "..") for part in parts)):
        problems.append(f"drive_path: expected a share and optional folders such as 'Shared/Reports', got {drive!r}")
    if any(c in server for c in "\\/ "):
        problems.append(f"server_ip: expected a host name or IP address, got {server!r}")
    dls = read_flag(config, "use_document_level_security")
    identities = read_text(config, "identity_mappings", problems, required=False)
    if dls and not identities:
        problems.append("identity_mappings: required with use_document_level_security (a file of "
                        "'name;user SID;group SIDs' lines)")
    if problems:
        raise SourceConfigError("Network drive: invalid configuration: " + "; ".join(problems))
    return _Settings(username, password, server, port, parts[0], parts[1:], dls, identities)


def _unc(*parts: str) -> str:
    return "\\".join(parts)


def _missing(exc: OSError) -> bool:
    """Whether the path is not there (smbclient raises OSErrors with an errno, not their subclasses)."""
    return isinstance(exc, (FileNotFoundError, NotADirectoryError)) or exc.errno in (errno.ENOENT, errno.ENOTDIR)


def _no_share(exc: BaseException) -> bool:
    """Whether the server said the share does not exist (smbclient reports it as a missing path)."""
    from smbprotocol.exceptions import BadNetworkName

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BadNetworkName):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class NetworkDriveDataSource(BaseDataSource):
    """Files and folders of an SMB share, with their readers for document-level security."""

    name = "Network Drive"
    service_type = "network_drive"
    advanced_rules_enabled = True
    dls_enabled = True
    operator_settings_model = NetworkDriveSettings

    def __init__(self, configuration: Any = None, **kwargs: Any):
        super().__init__(configuration, **kwargs)
        self._parsed: _Settings | None = None
        self._cache: dict[str, Any] = {}
        self._registered = False

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {
            "username": {"label": "Username", "order": 1, "type": "str",
                         "tooltip": "The account that lists and reads the share (DOMAIN\\name or name)."},
            "password": {"label": "Password", "order": 2, "type": "str", "sensitive": True,
                         "tooltip": "The account's password, or a ${env:NAME} / ${file:/path} reference the "
                                    "operator allows."},
            "server_ip": {"label": "SMB IP", "order": 3, "type": "str",
                          "tooltip": "The SMB server's host name or IP address."},
            "server_port": {"label": "SMB port", "order": 4, "type": "int", "display": "numeric",
                            "default_value": 445, "required": False},
            "drive_path": {"label": "SMB path", "order": 5, "type": "str",
                           "tooltip": "The share, optionally followed by a folder in it: Shared or Shared/Reports."},
            "use_document_level_security": {
                "label": "Enable document level security", "order": 6, "type": "bool", "display": "toggle",
                "default_value": False, "required": False,
                "tooltip": "Each document lists who may read it (from its security descriptor), and "
                           "access-control syncs write each user's access list: searches can then be "
                           "restricted per user."},
            "identity_mappings": {
                "label": "Path of CSV file containing users and groups SID", "order": 7, "type": "str",
                "required": False,
                "depends_on": [{"field": "use_document_level_security", "value": True}],
                "tooltip": "Lines 'name;user SID;group SID,group SID' (e.g. from scripts/servers/samba "
                           "identities); a relative path is read from the folder of the service's config "
                           "file, and must lie below the operator's identity_roots."},
        }

    # -- settings and connection -----------------------------------------------------------
    @property
    def settings(self) -> _Settings:
        if self._parsed is None:
            self._parsed = _settings(self.configuration)
        return self._parsed

    def network_endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.settings.server, self.settings.port)]

    async def validate_config(self) -> None:
        settings = self.settings
        if settings.dls:
            self._identity_file()

    def _identity_file(self) -> Path:
        path = config_folder() / Path(self.settings.identity_mappings).expanduser()
        resolved = os.path.realpath(path)
        if not within(resolved, tuple(os.path.realpath(root) for root in self.operator_settings.identity_roots)):
            raise SourceConfigError(
                f"identity_mappings: {path} is outside the folders this service may read identities from; the "
                "operator lists them in config.yml `identity_roots` of the network_drive sources: entry")
        return Path(resolved)

    def _kwargs(self) -> dict[str, Any]:
        s = self.settings
        return {"username": s.username, "password": s.password, "port": s.port, "connection_cache": self._cache}

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """Client errors as ours, naming the field to fix; never the password."""
        from smbprotocol import exceptions as smb

        s = self.settings
        try:
            yield
        except IngestError:
            raise
        except smb.LogonFailure as exc:
            raise SourceConfigError(f"Network drive: {s.server}:{s.port} refused the username/password of "
                                    f"{s.username!r} while {action}") from exc
        except smb.BadNetworkName as exc:
            raise SourceConfigError(f"drive_path: {s.server} has no share {s.share!r}") from exc
        except (ConnectionError, TimeoutError, smb.SMBConnectionClosed, ValueError) as exc:
            if isinstance(exc, ValueError) and "Failed to connect" not in str(exc):
                raise
            raise SourceUnavailable(f"Network drive: cannot reach {s.server}:{s.port} while {action}: "
                                    f"{type(exc).__name__}") from exc
        except smb.SMBAuthenticationError as exc:
            raise SourceConfigError(f"Network drive: authentication as {s.username!r} failed while {action}") from exc

    def _connect(self) -> None:
        if self._registered:
            return
        import smbclient

        s = self.settings
        with self._translated("signing in"):
            smbclient.register_session(s.server, username=s.username, password=s.password, port=s.port,
                                       connection_cache=self._cache, connection_timeout=30)
        self._registered = True

    async def ping(self) -> None:
        import smbclient

        self._connect()
        with self._translated(f"opening {self.settings.root}"):
            try:
                info = smbclient.stat(self.settings.root, **self._kwargs())
            except OSError as exc:
                s = self.settings
                if _no_share(exc):
                    raise SourceConfigError(f"drive_path: {s.server} has no share {s.share!r}") from exc
                if _missing(exc):
                    raise SourceConfigError(f"drive_path: {s.root} does not exist") from exc
                raise SourceConfigError(f"drive_path: {s.username!r} may not open {s.root}: "
                                        f"{exc.strerror or type(exc).__name__}") from exc
        if not info.st_file_attributes & _DIRECTORY:
            raise SourceConfigError(f"drive_path: {self.settings.root} is not a folder")

    async def close(self) -> None:
        if self._cache:
            import smbclient

            try:
                smbclient.reset_connection_cache(fail_on_error=False, connection_cache=self._cache)
            except Exception as exc:  # noqa: BLE001 - closing: nothing left to do about it
                self._logger.debug("closing the SMB connections failed: %s", exc)
            self._cache.clear()
            self._registered = False

    # -- reading -----------------------------------------------------------------------------
    def _list(self, folder: str, relative: str) -> list[Any]:
        """The entries of ``folder`` sorted by name; a folder that cannot be listed fails the read."""
        import smbclient

        self._connect()
        with self._translated(f"listing {relative or '.'}"):
            try:
                return sorted(smbclient.scandir(folder, **self._kwargs()), key=lambda entry: entry.name)
            except OSError as exc:
                if _missing(exc) and relative:
                    return []  # removed meanwhile: the next sync deletes its documents
                if _missing(exc):
                    raise SourceError(f"drive_path: {folder} does not exist; nothing was deleted") from exc
                raise SourceError(f"Network drive: cannot list {relative or folder}: "
                                  f"{exc.strerror or type(exc).__name__}; nothing was deleted") from exc

    def get_partitions(self) -> list[Partition]:
        folders = [entry.name for entry in self._list(self.settings.root, "")
                   if entry.smb_info.file_attributes & _DIRECTORY
                   and not entry.smb_info.file_attributes & _REPARSE_POINT]
        if not folders:
            return [Partition()]
        return [Partition("(top)", {"top": True})] + [Partition(name, {"folder": name}) for name in folders]

    def get_docs(self, filtering: Filter | None = None, partition: Partition | None = None):
        patterns = self._patterns(filtering)
        params = partition.params if partition else {}
        s = self.settings
        share_path = "/".join((s.share, *s.folder))
        if "folder" in params:
            name = params["folder"]
            included = patterns is None or _matches(share_path, patterns)
            yield from self._walk(_unc(s.root, name), name, share_path + "/" + name, patterns,
                                  included or _matches(share_path + "/" + name, patterns), recursive=True)
        else:
            top = patterns is None or _matches(share_path, patterns)
            yield from self._walk(s.root, "", share_path, patterns, top, recursive=not params.get("top"))

    def _walk(self, folder: str, relative: str, share_path: str, patterns: list[str] | None, included: bool,
              *, recursive: bool) -> Iterator[tuple[dict[str, Any], Any]]:
        """The documents below ``folder``; ``included``: whether the sync rules keep its entries."""
        for entry in self._list(folder, relative):
            info = entry.smb_info
            is_folder = bool(info.file_attributes & _DIRECTORY)
            path = _unc(folder, entry.name)
            if included:
                doc = {
                    "_id": str(info.file_id),
                    "path": path,
                    "title": entry.name,
                    "type": "folder" if is_folder else "file",
                    "size": 0 if is_folder else info.end_of_file,
                    "created_at": info.creation_time.isoformat(),
                    "_timestamp": info.change_time.isoformat(),
                }
                if self.settings.dls:
                    allowed = self._readers(path, is_folder, relative + entry.name)
                    doc[ACCESS_CONTROL_FIELD] = allowed
                    # Samba's change time is the write time: a permission change moves no time, so the
                    # readers are part of the id (a change is a new document, the old one deleted).
                    doc["_id"] += "-" + hashlib.sha256("\n".join(allowed).encode()).hexdigest()[:16]
                yield doc, (None if is_folder else _Download(self, path, (relative + "/" if relative else "")
                                                             + entry.name, info.end_of_file))
            if is_folder and recursive and not info.file_attributes & _REPARSE_POINT:
                child = share_path + "/" + entry.name
                yield from self._walk(path, (relative + "/" if relative else "") + entry.name, child, patterns,
                                      included or _matches(child, patterns), recursive=True)

    def _readers(self, path: str, is_folder: bool, relative: str) -> list[str]:
        """The identities the object's DACL allows to read it; unreadable security fails the read
        (a document without its readers would be visible to everyone)."""
        with self._translated(f"reading the permissions of {relative}"):
            try:
                return readers(self._dacl(path, is_folder))
            except OSError as exc:
                if _missing(exc):
                    return [NO_ONE]  # removed since listed: the next sync deletes it
                raise SourceError(f"Network drive: cannot read the permissions of {relative}: "
                                  f"{exc.strerror or type(exc).__name__}; nothing was deleted") from exc

    def _compound(self, path: str, is_folder: bool, *, read: int = 0, dacl: bool = False) -> tuple[Any, ...]:
        """One round trip (a compound create, read and/or security query, close): ``read`` bytes
        from the start of the file, the DACL's ACEs (``None``: no DACL), or both, in that order.
        smbclient's ``open_file`` would take a round trip for each."""
        from smbclient._io import SMBDirectoryIO, SMBFileIO, SMBFileTransaction
        from smbprotocol.file_info import InfoType
        from smbprotocol.open import SMB2QueryInfoRequest, SMB2QueryInfoResponse
        from smbprotocol.security_descriptor import SMB2CreateSDBuffer

        access = (_READ_CONTROL if dacl else 0) | (_READ_DATA | _READ_ATTRIBUTES if read else 0)
        raw = (SMBDirectoryIO if is_folder else SMBFileIO)(path, mode="r", share_access="rwd", desired_access=access,
                                                             **self._kwargs())
        connection = raw.fd.connection

        def aces(sent: Any) -> list[tuple[int, int, int, str]] | None:
            answer = SMB2QueryInfoResponse()
            answer.unpack(connection.receive(sent)["data"].get_value())
            descriptor = SMB2CreateSDBuffer()
            descriptor.unpack(answer["buffer"].get_value())
            acl = descriptor.get_dacl()
            if acl is None:
                return None
            return [(ace["ace_type"].get_value(), ace["ace_flags"].get_value(), ace["mask"].get_value(),
                     str(ace["sid"].get_value())) for ace in acl["aces"].get_value()]

        with SMBFileTransaction(raw) as transaction:
            if read:
                transaction += raw.fd.read(0, min(read, connection.max_read_size), send=False)
            if dacl:
                request = SMB2QueryInfoRequest()
                request["info_type"] = InfoType.SMB2_0_INFO_SECURITY
                request["output_buffer_length"] = 65536
                request["additional_information"] = _SECURITY_INFO_DACL
                request["file_id"] = raw.fd.file_id
                transaction += (request, aces)
        return transaction.results

    def _dacl(self, path: str, is_folder: bool) -> list[tuple[int, int, int, str]] | None:
        return self._compound(path, is_folder, dacl=True)[0]

    def read_file(self, path: str, relative: str, size: int | None = None) -> dict[str, Any] | None:
        """The content fields of one file; a file the account cannot open is a dead letter.

        A small file (``size`` from the listing) is read in one round trip; a bigger one, or one
        that grew since it was listed, is streamed."""
        import smbclient

        self._connect()
        extension = file_suffix(relative.rpartition("/")[2]).lower()
        with self._translated(f"reading {relative}"):
            try:
                if size == 0:
                    return content_fields(b"", extension)
                if size is not None and size < _CHUNK:
                    (data,) = self._compound(path, False, read=size + 1)
                    if len(data) <= size:  # else it grew since listed: streamed below
                        return content_fields(data, extension)
                with smbclient.open_file(path, mode="rb", **self._kwargs()) as opened:
                    chunks = []
                    while chunk := opened.read(_CHUNK):
                        chunks.append(chunk)
            except OSError as exc:
                if _missing(exc):
                    return None  # removed since listed: the next sync deletes it
                raise DocumentUnreadable(f"Network drive: cannot read {relative}: "
                                         f"{exc.strerror or type(exc).__name__}") from exc
        return content_fields(b"".join(chunks), extension)

    # -- sync rules ----------------------------------------------------------------------------
    def validate_advanced_rules(self, advanced_rules: Any) -> list[str]:
        return _parse_patterns(advanced_rules)[1]

    def _patterns(self, filtering: Filter | None) -> list[str] | None:
        if filtering is None or not filtering.has_advanced_rules():
            return None
        patterns, problems = _parse_patterns(filtering.get_advanced_rules())
        if problems:
            from sources.errors import SyncRulesError

            raise SyncRulesError("Network drive: invalid advanced sync rules: " + "; ".join(problems))
        return patterns or None

    # -- document-level security -----------------------------------------------------------
    def get_access_control(self) -> Iterator[dict[str, Any]]:
        """One document per user of ``identity_mappings`` (the user's identity and DLS query)."""
        if not self.settings.dls:
            raise SourceConfigError("use_document_level_security: access-control syncs need it on (and "
                                    "identity_mappings); nothing was written")
        path = self._identity_file()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SourceConfigError(f"identity_mappings: cannot read {path}: {exc.strerror}") from exc
        for user in parse_identity_mappings(text):
            yield access_control_document(user)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    return wcglob.compile(pattern, flags=wcglob.GLOBSTAR)


def _matches(share_path: str, patterns: list[str] | None) -> bool:
    """Whether a folder (``share/folder/sub``) matches one of the advanced rules' patterns."""
    return patterns is None or any(_compiled(p).match(share_path) for p in patterns)


def _parse_patterns(advanced_rules: Any) -> tuple[list[str], list[str]]:
    rules = advanced_rules["value"] if isinstance(advanced_rules, dict) and set(advanced_rules) == {"value"} \
        else advanced_rules
    if rules in (None, [], {}):
        return [], []
    example = 'expected a list like [{"pattern": "Shared/Reports/**"}]'
    if not isinstance(rules, list):
        return [], [f"advanced rules: {example}, got {type(rules).__name__}"]
    patterns, problems = [], []
    for number, rule in enumerate(rules):
        if not isinstance(rule, dict) or set(rule) != {"pattern"}:
            problems.append(f"advanced rules[{number}]: {example}, got {rule!r}")
        elif not isinstance(rule["pattern"], str) or not rule["pattern"].strip():
            problems.append(f"advanced rules[{number}].pattern: expected a non-empty glob, got {rule['pattern']!r}")
        else:
            patterns.append(rule["pattern"].strip().replace("\\", "/").strip("/"))
    return patterns, problems


class _Download:
    """The lazy download of one file (its source holds the SMB session)."""

    __slots__ = ("source", "path", "relative", "size")

    def __init__(self, source: NetworkDriveDataSource, path: str, relative: str, size: int | None = None):
        self.source, self.path, self.relative, self.size = source, path, relative, size

    def __call__(self, doit: bool = True, timestamp: str | None = None) -> dict[str, Any] | None:
        if not doit:
            return None
        return self.source.read_file(self.path, self.relative, self.size)
