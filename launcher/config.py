"""config.yml: loading, ``${ENV}`` substitution and validation, all problems at once.

The file has four sections::

    elasticsearch:   how to reach the cluster (host, username/password or api_key, ca_certs, ...)
    service:         the daemon (idling, heartbeat, max_concurrent_syncs, error budget, ...)
    sources:         service type -> "package.module:ClassName", or {class: FQN, <operator settings>}
    secrets:         which references a sensitive connector field may hold (launcher.secret_refs)
    pipeline:        how syncs run (runner and its options, bulk sizes, dead letters, ...)

A ``sources:`` entry written as a mapping carries the operator's settings for that source
(e.g. ``dir: {class: sources.directory:DirectoryDataSource, allowed_roots: [/srv/docs]}``):
they are validated at load against the class's ``operator_settings_model`` (the class is
imported for that; one that cannot be imported is reported where it is used, as a plain
FQN is) and kept in ``Config.source_settings``; ``Config.sources`` maps every service
type to its FQN either way.

Relative paths (:data:`PATH_SETTINGS`: ``ca_certs``, ``dead_letters``, ``work_dir``, the
digest cache, ...) are taken from the folder of the config file, whatever the working
directory; so are the folders of ``secrets.folders`` and of a source's ``allowed_roots``; the daemon
reads a connector's relative paths (a directory source's folder) from there too
(``sources.base.config_folder()``).

Every default lives in the models below, once. Unknown keys are errors; each problem
is reported with its path, e.g. ``elasticsearch.host: expected a URL, got 42``; secrets
are never echoed back.

Example usage::

    config = load_config("config.yml")
    config.elasticsearch.connection().client().cluster.health()
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.settings import (
    BulkConfig, DataflowConfig, FlinkConfig, PipelineConfig, PortableConfig, PrismConfig, RunnerName,
)
from sources.errors import ConfigError, IngestError
from transforms.es_client import ElasticsearchConnection

__all__ = [
    "Config",
    "unused_local_config",
    "ElasticsearchConfig",
    "SecretsConfig",
    "ServiceConfig",
    "PipelineConfig",
    "BulkConfig",
    "FlinkConfig",
    "DataflowConfig",
    "PrismConfig",
    "PortableConfig",
    "load_config",
    "parse_config",
    "default_config_path",
]

_FQN = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEYS = {"password", "api_key", "secret", "token"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ElasticsearchConfig(_Section):
    """How to reach Elasticsearch (the BYOC indices and the content indices)."""

    host: str = "http://127.0.0.1:9200"
    username: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    ca_certs: str | None = None
    verify_certs: bool = True
    request_timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)

    @field_validator("host", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"expected a URL like http://host:9200, got {value!r}")
        return value.rstrip("/")

    @field_validator("ca_certs")
    @classmethod
    def _ca_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"expected a readable CA certificate file, no file at {value!r}")
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> "ElasticsearchConfig":
        if self.api_key is not None and self.username is not None:
            raise ValueError("use either username/password or api_key, not both")
        if self.password is not None and self.username is None:
            raise ValueError("password given without username")
        return self

    def connection(self) -> ElasticsearchConnection:
        return ElasticsearchConnection(
            hosts=(self.host,),
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            api_key=self.api_key.get_secret_value() if self.api_key else None,
            ca_certs=self.ca_certs,
            verify_certs=self.verify_certs,
            request_timeout=self.request_timeout,
            max_retries=self.max_retries,
        )


class ServiceConfig(_Section):
    """The daemon: polling, heartbeats, concurrency and the error budget."""

    idling: float = Field(5.0, gt=0, description="seconds between two polls")
    job_check_interval: float = Field(
        0.25, gt=0, description="seconds between two looks for new jobs between polls (one small search of the "
                                "jobs each; never more often than polls), so that a requested sync starts "
                                "within about this long rather than within a poll interval")
    heartbeat: float = Field(300.0, gt=0, description="seconds between connector heartbeats")
    max_concurrent_syncs: int = Field(2, ge=1)
    max_errors: int = Field(20, ge=1, description="poll failures tolerated within max_errors_span")
    max_errors_span: float = Field(600.0, gt=0)
    job_stale_after: float = Field(300.0, gt=0, description="reap jobs with no last_seen for this long")
    job_progress_interval: float = Field(5.0, gt=0, le=10, description="seconds between job counter writes")
    cancel_check_interval: float = Field(2.0, gt=0, le=5)
    connector_ids: list[str] = Field(default_factory=list, description="serve only these connectors")
    service_types: list[str] = Field(default_factory=list, description="serve only these service types")
    hostname: str | None = None
    id: str | None = Field(None, description="this service's identity in the jobs it claims, so that it takes "
                                             "back its own jobs at once after a crash (default: the host name "
                                             "and the config file's path)")
    metrics_address: str | None = Field(None, description="host:port for /healthz and /metrics")
    log_format: Literal["text", "json"] = "text"
    warm_sync_processes: bool = Field(
        True, description="fork each sync process from a warm process that imported Python, Beam and the sources "
                          "once (launcher/sync_processes.py); false: a fresh interpreter per sync (~1.5 CPU-s more)")
    protocol_store: Literal["auto", "connector_api", "indices"] = Field(
        "auto", description="where connectors and jobs live: the connector API where the cluster has it (auto), "
                            "or always one of connector_api / indices")


class SecretsConfig(_Section):
    """Which references a sensitive connector field may hold, resolved by the service (docs/security.md)."""

    env: list[str] = Field(default_factory=list, description="variables ${env:NAME} may name (fnmatch patterns)")
    folders: list[str] = Field(default_factory=list, description="folders whose files ${file:/path} may name")

    @field_validator("env")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not re.fullmatch(r"[A-Za-z_*?][A-Za-z0-9_*?]*", name)]
        if bad:
            raise ValueError(f"expected environment variable names (or patterns like PG_*), got {bad!r}")
        return value

    @field_validator("folders")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        relative = [folder for folder in value if not os.path.isabs(folder)]
        if relative:
            raise ValueError(f"expected absolute folder paths, got {relative!r}")
        return value


class Config(_Section):
    elasticsearch: ElasticsearchConfig = Field(default_factory=ElasticsearchConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    sources: dict[str, str] = Field(default_factory=dict)
    source_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="service type -> the operator's settings for its source")
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    connectors: dict[str, "PipelineOverride"] = Field(
        default_factory=dict, description="per-connector overrides, by connector id"
    )
    path: str | None = Field(None, exclude=True)

    @field_validator("sources")
    @classmethod
    def _fqns(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [f"{name}: expected package.module:ClassName, got {fqn!r}" for name, fqn in value.items()
               if not isinstance(fqn, str) or not _FQN.match(fqn)]
        if bad:
            raise ValueError("; ".join(bad))
        return value

    def pipeline_for(self, connector_id: str | None) -> PipelineConfig:
        """The pipeline settings for one connector (global, with its overrides)."""
        override = self.connectors.get(connector_id or "")
        if override is None:
            return self.pipeline
        return self.pipeline.model_copy(update=override.model_dump(exclude_none=True))


class PipelineOverride(_Section):
    runner: RunnerName | None = None
    direct_num_workers: int | None = Field(None, ge=1)


Config.model_rebuild()


def default_config_path() -> Path:
    """The config.yml shipped with the package (the repository's, in a checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "config.yml", here / "config.yml"):
        if candidate.is_file():
            return candidate
    return here / "config.yml"


def unused_local_config(given: str | os.PathLike[str] | None, cwd: Path | None = None) -> Path | None:
    """``./config.yml`` when it exists and is not the file read (no ``-c``, so the packaged one is), else None."""
    if given:
        return None
    local = (cwd or Path.cwd()) / "config.yml"
    if not local.is_file() or local.resolve() == default_config_path().resolve():
        return None
    return local.resolve()


def _substitute(value: Any, path: str, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, str):
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable {name} is not set")
            return ""
        replaced = _ENV.sub(replace, value)
        if replaced != value and _ENV.fullmatch(value):
            # A whole-value substitution may be a number or boolean.
            try:
                return yaml.safe_load(replaced) if replaced else None
            except yaml.YAMLError:
                return replaced
        return replaced
    return value


def _is_secret(loc: tuple[Any, ...]) -> bool:
    return any(str(part) in _SECRET_KEYS for part in loc)


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind == "value_error" or "got" in message:
        return f"{path}: {message}"
    shown = "****" if _is_secret(loc) else repr(error.get("input"))
    return f"{path}: {message[0].lower() + message[1:]}, got {shown}"


#: Settings that name files or folders: a relative one is taken from the config file's folder
#: (not from the working directory of whoever runs the service: ``/`` under systemd).
PATH_SETTINGS = ("elasticsearch.ca_certs", "pipeline.dead_letters", "pipeline.work_dir", "pipeline.secrets_dir",
                 "pipeline.digest_cache_dir", "pipeline.prism.location", "pipeline.flink.job_server_jar",
                 "pipeline.dataflow.setup_file")


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the :data:`PATH_SETTINGS` of ``raw``, ``secrets.folders`` and the sources'
    ``allowed_roots`` absolute against ``base`` (``~`` expanded; URLs such as ``gs://`` left alone)."""
    for dotted in PATH_SETTINGS:
        *parents, key = dotted.split(".")
        section: Any = raw
        for name in parents:
            section = section.get(name) if isinstance(section, dict) else None
        value = section.get(key) if isinstance(section, dict) else None
        if isinstance(value, str) and value.strip() and "://" not in value:
            section[key] = _absolute(value, base)
    lists = [raw.get("secrets", {}).get("folders") if isinstance(raw.get("secrets"), dict) else None]
    if isinstance(raw.get("sources"), dict):  # operator settings: folders a source may read
        lists += [entry.get("allowed_roots") for entry in raw["sources"].values() if isinstance(entry, dict)]
    for folders in lists:
        if isinstance(folders, list):
            folders[:] = [_absolute(f, base) if isinstance(f, str) and f.strip() else f for f in folders]


def _absolute(value: str, base: Path) -> str:
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else str(base / expanded)


def _source_entries(entries: Any, problems: list[str]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """``sources:`` as (service type -> FQN, service type -> operator settings), settings validated."""
    if not isinstance(entries, dict):
        return entries, {}  # the model reports the wrong type
    fqns: dict[str, Any] = {}
    settings: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            fqns[name] = entry
            continue
        entry = dict(entry)
        fqn = entry.pop("class", None)
        if not isinstance(fqn, str) or not _FQN.match(fqn):
            problems.append(f"sources.{name}.class: expected the source's package.module:ClassName, got {fqn!r}")
            continue
        fqns[name], settings[name] = fqn, entry
        problems.extend(f"sources.{name}.{problem}" for problem in _operator_settings_problems(fqn, entry))
    return fqns, settings


def _operator_settings_problems(fqn: str, settings: dict[str, Any]) -> list[str]:
    """What is wrong with a source's operator settings (empty when its class cannot be imported:
    that is reported where the source is used)."""
    from sources.base import BaseDataSource
    from sources.driver import operator_settings_of
    from sources.registry import load_source_class

    try:
        cls = load_source_class(fqn)
    except IngestError:
        return []
    try:
        validated = operator_settings_of(cls, settings)
    except ConfigError as exc:
        return exc.problems
    if validated.allowed_hosts is not None and getattr(cls, "network_endpoints", None) in (
            None, BaseDataSource.network_endpoints):
        return [f"allowed_hosts: {cls.__name__} does not list the hosts it connects to (network_endpoints), "
                "so they cannot be confined"]
    return []


def parse_config(raw: Any, *, path: str | None = None) -> Config:
    """Validate an already-parsed YAML document. Raises ConfigError listing every problem."""
    where = path or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(raw).__name__}")
    problems: list[str] = []
    raw = _substitute(raw, "", problems)
    for key in ("elasticsearch", "service", "pipeline", "sources", "connectors", "secrets"):
        if key in raw and raw[key] is None:
            raw[key] = {}
    _resolve_paths(raw, Path(path).resolve().parent if path else Path.cwd())
    if "source_settings" in raw:
        problems.append("source_settings: unknown key (operator settings go in the sources: entry, "
                        "as {class: package.module:ClassName, <settings>})")
    raw["sources"], raw["source_settings"] = _source_entries(raw.get("sources", {}), problems)
    try:
        config = Config.model_validate({**raw, "path": path})
    except ValidationError as exc:
        problems.extend(_describe(e) for e in exc.errors())
        config = None
    if problems:
        raise ConfigError(f"{where} is not valid:", problems)
    assert config is not None
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, substitute and validate a config file (default: the packaged config.yml)."""
    file = Path(path) if path else default_config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file.resolve()}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file.resolve()}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{file}: not valid YAML{where}: {problem}") from None
    return parse_config(raw, path=str(file))
