"""``elastic-ingest``: run the service, and do without Kibana what Kibana does.

    elastic-ingest [-h] [--action ACTION] [-c CONFIG_FILE] [--debug] [options]

Every action and option is described once, below (``ACTIONS`` and the click options);
``--help`` prints them. User mistakes print ``TypeName: message`` and exit 1; tracebacks
only with ``--debug``. Sensitive configuration values are never printed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from launcher.config import Config, default_config_path, load_config, unused_local_config
from launcher.configuration import coerce_value, complete_configuration, redact, typed_fields
from launcher.continuous_jobs import describe_stream, is_continuous, release_deleted, stream_state, stream_summary
from launcher.index_claims import claim_index, release_index
from launcher.index_ownership import check_index_ownership
from launcher.logs import setup_logging
from launcher.protocol import (
    DEFAULT_PIPELINE, FINAL_STATUSES, create_job, draft_rules_problem, get_connector, get_job, index_name_problem,
    new_connector, now_iso, search_connectors, update_connector,
)
from launcher.scheduling import validate_cron
from launcher.store import merged_copy
from sources.base import CONFIG_DIR_ENV
from sources.errors import ConfigError, ConnectorError, IngestError, format_error
from sources.registry import display_name, load_source_class

__all__ = ["main", "ACTIONS"]

ACTIONS: dict[str, str] = {
    "poll": "run the connector service daemon (default)",
    "list": "list the sources registered in the config, without contacting Elasticsearch; with --service-type, "
            "that source's configuration fields (label, type, default, required, sensitive, description)",
    "create-connector": "register a connector (--service-type, --index-name, --set, --schedule, --pipeline, --rules); "
                        "every required field needs a value, unless --draft",
    "update-connector": "change a connector (--connector-id and --set / --schedule / --index-name / --pipeline / --rules)",
    "delete-connector": "delete a connector (--connector-id); its indexed documents stay, what its source keeps "
                        "for a continuous sync (a replication slot) is released",
    "connectors": "show connectors: status, the documents their index holds, the last sync and its counts "
                  "(--connector-id to show one)",
    "sync": "request a sync (--connector-id, --job-type, --reindex); --wait follows it to the end",
    "cancel": "cancel a job (--job-id)",
    "jobs": "show sync jobs: status, counters, duration, error (--connector-id to filter)",
    "dead-letters": "show the documents a job could not index, and why (--job-id)",
}

_LOGGER = logging.getLogger("launcher.cli")
#: How long ``sync --wait`` lets a job stay ``pending`` before it says nobody has claimed it (default).
UNCLAIMED_AFTER = 15.0


class _Context:
    def __init__(self, config_file: str | None, debug: bool, as_json: bool):
        self.config_file = config_file
        self.debug = debug
        self.as_json = as_json
        self._config: Config | None = None
        self._es = None
        self._store = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_file)
        return self._config

    @property
    def es(self):
        """A client, once Elasticsearch answered as Elasticsearch (else an error saying what to fix)."""
        if self._es is None:
            from launcher.es_probe import probe_elasticsearch

            probe_elasticsearch(self.config.elasticsearch, config_file=self.config.path)
            self._es = self.config.elasticsearch.connection().client()
        return self._es

    @property
    def store(self):
        """Where connectors and jobs live (the connector API, or the indices; see launcher.store)."""
        if self._store is None:
            from launcher.store import open_store

            store = open_store(self.es, self.config.service.protocol_store)
            problems = store.prepare()
            if problems:
                raise ConnectorError("the protocol's indices cannot be used: " + "; ".join(problems))
            self._store = store
        return self._store


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    result = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        result[key.strip()] = value
    return result


class _FromEnv(str):
    """A ``--set-env`` value: the name of an environment variable (``str`` is the name)."""


def _values(set_values: tuple[str, ...], set_env: tuple[str, ...]) -> dict[str, str]:
    """``--set FIELD=VALUE`` and ``--set-env FIELD=ENV_VAR`` (secrets stay out of process arguments)."""
    values: dict[str, str] = _pairs(set_values, "--set")
    for field, variable in _pairs(set_env, "--set-env").items():
        values[field] = _FromEnv(variable.strip())
    return values


def _sensitive_value(config: Config, key: str, raw: str) -> str | None:
    """What a sensitive field stores for ``raw``: a reference for ``--set-env`` (the service
    resolves it; the secret never reaches the document), a reference given as is, else None."""
    from launcher.secret_refs import env_reference, is_reference, reference_problem

    reference = env_reference(raw) if isinstance(raw, _FromEnv) else raw if is_reference(raw) else None
    if reference is None:
        return None
    problem = reference_problem(reference, config.secrets)
    if problem is not None:
        option = "--set-env" if isinstance(raw, _FromEnv) else "--set"
        raise ConfigError(f"{option} {key}: {problem}")
    return reference


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, sort_keys=True))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_lines=False)
    for column in columns:
        keep_whole = column in ("id", "created", "last synced", "status", "duration")
        table.add_column(column, overflow="fold", no_wrap=keep_whole, min_width=len(column))
    for row in rows:
        # Text, not str: values are shown as they are, never read as Rich markup
        # (Elasticsearch's reasons name fields in brackets: "failed to parse field [n]").
        table.add_row(*[Text("" if v is None else str(v)) for v in row])
    import shutil

    width = shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else 200
    Console(width=max(120, width)).print(table)


# -- actions ---------------------------------------------------------------------------
def action_list(ctx: _Context, *, service_type: str | None = None, **_: Any) -> int:
    if service_type:
        return _describe_source(ctx, service_type)
    failed = False
    rows = []
    for service_type, fqn in sorted(ctx.config.sources.items()):
        try:
            name = display_name(load_source_class(fqn))
            rows.append({"service_type": service_type, "fqn": fqn, "name": name, "error": None})
        except IngestError as exc:
            failed = True
            rows.append({"service_type": service_type, "fqn": fqn, "name": None, "error": format_error(exc)})
    if ctx.as_json:
        _echo_json(rows)
    else:
        for row in rows:
            status = row["name"] if row["error"] is None else f"ERROR {row['error']}"
            click.echo(f"{row['service_type']:<24} {row['fqn']:<48} {status}")
        if not failed and rows:
            click.echo("\nA source's configuration fields: elastic-ingest --action list --service-type TYPE")
    return 1 if failed else 0


def _source_class(config: Config, service_type: str) -> type:
    fqn = config.sources.get(service_type)
    if fqn is None:
        raise ConnectorError(f"unknown service type {service_type!r}; known: {', '.join(sorted(config.sources))}")
    return load_source_class(fqn)


def _describe_source(ctx: _Context, service_type: str) -> int:
    """One source's configuration fields and features (``list --service-type``)."""
    from sources.schema import describe_fields, features_of

    cls = _source_class(ctx.config, service_type)
    fields = describe_fields(cls)
    features = features_of(cls)
    if ctx.as_json:
        _echo_json({"service_type": service_type, "fqn": ctx.config.sources[service_type], "name": display_name(cls),
                    "features": features, "fields": [f.to_dict() for f in fields]})
        return 0
    supported = [name.replace("_", " ") for name, on in features.items() if on]
    click.echo(f"{service_type}: {display_name(cls)} ({ctx.config.sources[service_type]}); "
               f"supports full syncs{''.join(', ' + s for s in supported)}")
    rows = []
    for f in fields:
        required = "yes" if f.must_be_given else ""
        if f.depends_on:
            condition = ", ".join(f"{k}={str(v).lower()}" for k, v in f.depends_on.items())
            required = f"if {condition}" if f.must_be_given else f"(used if {condition})"
        rows.append([f.name, f.label, f.type, f.shown_default, required,
                     "yes" if f.sensitive else "", f.description])
    _table(f"Configuration of {service_type} connectors (--set FIELD=VALUE; sensitive ones with --set-env)",
           ["field", "label", "type", "default", "required", "sensitive", "description"], rows)
    return 0


def action_poll(ctx: _Context, **_: Any) -> int:
    """The daemon: health and metrics first (they say why it is not ready), then it waits for
    Elasticsearch, then polls until SIGTERM/SIGINT. Only configuration errors end it early."""
    from launcher.daemon import Daemon

    config = ctx.config
    _LOGGER.info("configuration: %s%s", Path(config.path or default_config_path()).resolve(),
                 "" if ctx.config_file else " (the packaged config.yml: no -c given)")
    # Relative paths of connectors (a directory source's folder) are read from the config
    # file's folder, as config.yml's own are, in the daemon and its sync processes alike.
    os.environ[CONFIG_DIR_ENV] = str(Path(config.path).resolve().parent if config.path
                                     else default_config_path().parent)
    daemon = Daemon(config, config.elasticsearch.connection().client())  # it prepares its store itself
    daemon.install_signal_handlers()
    metrics = None
    if config.service.metrics_address:
        from launcher.metrics import serve_metrics

        metrics = serve_metrics(config.service.metrics_address, daemon)
    try:
        if daemon.wait_for_elasticsearch():
            from launcher.privileges import check_service_privileges

            # Before anything else: a missing privilege is then named, whichever it is.
            check_service_privileges(daemon.es, config.service.protocol_store,
                                     who=f"the credentials in {config.path or 'config.yml'} (elasticsearch)")
            daemon.run()
    finally:
        if metrics is not None:
            metrics.shutdown()
    return 0


def _configuration_with(config: Config, service_type: str, current: Any, values: dict[str, str]) -> dict[str, Any]:
    cls = _source_class(config, service_type)
    configuration, _ = complete_configuration(current or {}, cls.get_default_configuration())
    problems = []
    for key, raw in values.items():
        if key not in configuration:
            problems.append(f"{key}: not a field of {service_type}; fields are: {', '.join(sorted(configuration))}")
            continue
        if configuration[key].get("sensitive"):
            reference = _sensitive_value(config, key, raw)
            if reference is not None:
                configuration[key]["value"] = reference
                continue
        if isinstance(raw, _FromEnv):  # not a secret: the value itself is stored
            if raw not in os.environ:
                problems.append(f"--set-env {key}: environment variable {raw} is not set")
                continue
            raw = os.environ[raw]
        kind = configuration[key].get("type", "str")
        try:
            value = coerce_value(json.loads(raw) if kind == "list" and raw.startswith("[") else raw, kind)
        except (ValueError, json.JSONDecodeError) as exc:
            problems.append(f"{key}: {exc}" if not configuration[key].get("sensitive") else f"{key}: expected a {kind}")
            continue
        configuration[key]["value"] = value
    if problems:
        raise ConfigError("invalid --set values:", problems)
    return configuration


def _scheduling(current: Any, schedules: dict[str, str]) -> dict[str, Any]:
    scheduling = dict(current or {})
    problems = []
    for job_type, interval in schedules.items():
        if job_type not in ("full", "incremental", "access_control"):
            problems.append(f"{job_type}: expected full, incremental or access_control")
            continue
        if interval.lower() in ("off", "disabled", ""):
            scheduling[job_type] = {**scheduling.get(job_type, {}), "enabled": False}
            continue
        problem = validate_cron(interval)
        if problem:
            problems.append(f"{job_type}: {problem}")
            continue
        scheduling[job_type] = {"enabled": True, "interval": interval}
    if problems:
        raise ConfigError("invalid --schedule values:", problems)
    return scheduling


_PIPELINE_FLAGS = ("extract_binary_content", "reduce_whitespace", "run_ml_inference")


def _pipeline(current: Any, name: str | None, flags: tuple[str, ...]) -> dict[str, Any]:
    pipeline = dict(current or {})
    if name is not None:
        pipeline["name"] = name
    problems = []
    for key, raw in _pairs(flags, "--pipeline-flag").items():
        if key not in _PIPELINE_FLAGS:
            problems.append(f"{key}: expected one of {', '.join(_PIPELINE_FLAGS)}")
            continue
        try:
            pipeline[key] = coerce_value(raw, "bool")
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    if problems:
        raise ConfigError("invalid --pipeline-flag values:", problems)
    return pipeline


def action_create_connector(ctx: _Context, *, service_type: str | None, index_name: str | None,
                            connector_id: str | None, name: str | None, set_values: tuple[str, ...],
                            schedule: tuple[str, ...], pipeline: str | None, pipeline_flags: tuple[str, ...] = (),
                            rules: str | None = None, set_env: tuple[str, ...] = (), draft: bool = False,
                            **_: Any) -> int:
    if not service_type or not index_name:
        raise click.UsageError("create-connector needs --service-type and --index-name")
    config = ctx.config
    configuration = _configuration_with(config, service_type, {}, _values(set_values, set_env))
    doc = new_connector(service_type=service_type, index_name=index_name, name=name, configuration=configuration)
    doc["status"] = _status_for(configuration, service_type, draft, "connector not created")
    doc["scheduling"] = _scheduling(doc["scheduling"], _pairs(schedule, "--schedule"))
    doc["pipeline"] = _pipeline(doc["pipeline"], pipeline, pipeline_flags)
    _check_bounds(ctx, service_type, configuration, "connector not created")
    _check_pipeline(ctx, pipeline, draft)
    if rules is not None:
        from launcher.protocol import Connector

        doc["filtering"] = _checked_rules(ctx, doc, _draft_rules(Connector(connector_id or "", doc), rules), draft)
    from elasticsearch import ConflictError

    if connector_id and get_connector(ctx.store, connector_id) is not None:
        raise ConnectorError(f"a connector with id {connector_id!r} already exists; use update-connector")
    # Our own id, so that the index is claimed in its name before the connector is written.
    connector_id = connector_id or uuid.uuid4().hex
    check_index_ownership(ctx.store, index_name, connector_id)
    claim_index(ctx.store, index_name, connector_id)  # atomic: of two creators at once, one wins
    try:
        new_id = ctx.store.create_connector(doc, connector_id)
    except ConflictError:
        raise ConnectorError(f"a connector with id {connector_id!r} already exists; use update-connector") from None
    except BaseException:
        release_index(ctx.es, index_name, connector_id)
        raise
    _create_content_index(ctx, index_name)
    if ctx.as_json:
        _echo_json({"id": new_id, "result": "created"})
    else:
        click.echo(f"connector {new_id} created ({service_type} -> {index_name})")
    return 0


def _create_content_index(ctx: _Context, index_name: str) -> None:
    """Create the connector's content index now, as Kibana and Elastic's CLI do with a new
    connector (the first sync then starts writing at once); a sync creates it if it is missing."""
    from transforms.content_index import ensure_content_index

    try:
        ensure_content_index(ctx.es, index_name, ctx.config.pipeline.content_index.model_dump())
    except Exception as exc:  # noqa: BLE001 - e.g. no privilege to create it: the first sync will say
        _LOGGER.warning("content index %s not created now (the first sync creates it): %s", index_name,
                        format_error(exc))


def _check_bounds(ctx: _Context, service_type: str, configuration: dict[str, Any], refused: str) -> None:
    """Refuse now what the operator's bounds in config.yml would refuse at the first sync: a host
    outside ``allowed_hosts`` (network sources), a folder outside ``allowed_roots`` (``dir``).
    Nothing is contacted; a configuration still lacking its values is left to the sync's check."""
    from launcher.configuration import missing_required
    from sources.driver import build_source
    from sources.errors import SourceConfigError

    if missing_required(configuration):
        return
    try:
        source = build_source(_source_class(ctx.config, service_type), typed_fields(configuration),
                              ctx.config.source_settings.get(service_type, {}))  # checks allowed_hosts
        check = getattr(source, "check_operator_bounds", None)
        if callable(check):
            check()
    except SourceConfigError as exc:
        raise ConfigError(f"{refused}: {exc} (config.yml sources: {service_type})") from None


def _check_pipeline(ctx: _Context, name: str | None, draft: bool) -> None:
    """Refuse an ingest pipeline that does not exist (a typo would make every sync index without it);
    ``--draft`` saves it anyway. Kibana's default, ``search-default-ingestion``, is always accepted."""
    from transforms.content_index import ingest_pipeline_exists

    if not name or draft or name == DEFAULT_PIPELINE["name"] or ingest_pipeline_exists(ctx.es, name):
        return
    raise ConfigError(f"--pipeline: ingest pipeline {name!r} does not exist on {ctx.config.elasticsearch.host}; "
                      f"create it first (PUT _ingest/pipeline/{name}), or --draft to save the name anyway")


def _status_for(configuration: dict[str, Any], service_type: str, draft: bool, refused: str) -> str:
    """``configured``, or ``needs_configuration`` for a ``--draft`` that lacks required values;
    without ``--draft`` missing values are refused, each named with what it is."""
    from launcher.configuration import missing_required

    missing = missing_required(configuration)
    if not missing:
        return "configured"
    if draft:
        return "needs_configuration"
    problems = []
    for name in missing:
        spec = configuration[name]
        about = " ".join(str(spec.get("tooltip") or "").split())
        problems.append(f"{name} ({spec.get('label') or name}){': ' + about if about else ''}")
    raise ConfigError(f"{refused}: {service_type} needs a value for {', '.join(missing)} (--set FIELD=VALUE, or "
                      "--set-env FIELD=ENV_VAR for secrets; --draft to save it unfinished, as needs_configuration):",
                      problems)


def _require(value: str | None, option: str, action: str) -> str:
    if not value:
        raise click.UsageError(f"{action} needs {option}")
    return value


_UPDATE_ATTEMPTS = 5


def action_update_connector(ctx: _Context, *, connector_id: str | None, set_values: tuple[str, ...],
                            schedule: tuple[str, ...], index_name: str | None, pipeline: str | None,
                            name: str | None, rules: str | None, pipeline_flags: tuple[str, ...] = (),
                            set_env: tuple[str, ...] = (), draft: bool = False, **_: Any) -> int:
    """Change a connector: read it, work out the new fields, write them conditionally.

    The write is conditional on the document as read, so a change made meanwhile (the
    daemon's heartbeat, the end of a sync, Kibana) is never overwritten with stale values;
    on such a conflict the connector is read again and the change worked out again.
    """
    from elasticsearch import ConflictError

    connector_id = _require(connector_id, "--connector-id", "update-connector")
    connector = get_connector(ctx.store, connector_id)
    if connector is None:
        raise ConnectorError(f"no connector with id {connector_id!r}")
    previous_index = connector.index_name
    moved = bool(index_name) and index_name != previous_index
    if index_name:
        check_index_ownership(ctx.store, index_name, connector_id)
        claim_index(ctx.store, index_name, connector_id)
    try:
        for attempt in range(_UPDATE_ATTEMPTS):
            connector = get_connector(ctx.store, connector_id) if attempt else connector
            if connector is None:
                raise ConnectorError(f"no connector with id {connector_id!r}")
            updates = _connector_updates(ctx, connector, set_values=set_values, set_env=set_env, schedule=schedule,
                                         index_name=index_name, pipeline=pipeline, pipeline_flags=pipeline_flags,
                                         name=name, rules=rules, draft=draft)
            try:
                update_connector(ctx.store, connector_id, updates, expected=connector)
                break
            except ConflictError:
                if attempt == _UPDATE_ATTEMPTS - 1:
                    raise ConnectorError(f"connector {connector_id} kept changing while it was updated "
                                         f"({_UPDATE_ATTEMPTS} attempts); try again") from None
    except BaseException:
        if moved:
            release_index(ctx.es, str(index_name), connector_id)
        raise
    if moved and isinstance(previous_index, str):
        release_index(ctx.es, previous_index, connector_id)
    if index_name:
        _create_content_index(ctx, index_name)
    changed = ", ".join(sorted(set(updates) - {"updated_at"}))
    if ctx.as_json:
        _echo_json({"id": connector_id, "result": "updated", "fields": sorted(set(updates) - {"updated_at"})})
    else:
        click.echo(f"connector {connector_id} updated: {changed}")
    return 0


def _connector_updates(ctx: _Context, connector: Any, *, set_values: tuple[str, ...], set_env: tuple[str, ...],
                       schedule: tuple[str, ...], index_name: str | None, pipeline: str | None,
                       pipeline_flags: tuple[str, ...], name: str | None, rules: str | None,
                       draft: bool) -> dict[str, Any]:
    """The fields ``update-connector`` writes, worked out from the connector as read."""
    updates: dict[str, Any] = {}
    if set_values or set_env:
        updates["configuration"] = _configuration_with(ctx.config, connector.service_type,
                                                       connector.get("configuration"), _values(set_values, set_env))
        status = _status_for(updates["configuration"], str(connector.service_type), draft,
                             f"connector {connector.id} not updated")
        if status == "needs_configuration" or connector.get("status") in ("created", "needs_configuration"):
            updates["status"] = status
        _check_bounds(ctx, str(connector.service_type), updates["configuration"],
                      f"connector {connector.id} not updated")
    if schedule:
        updates["scheduling"] = _scheduling(connector.get("scheduling"), _pairs(schedule, "--schedule"))
    if index_name:
        updates["index_name"] = index_name
    if name:
        updates["name"] = name
    if pipeline is not None or pipeline_flags:
        _check_pipeline(ctx, pipeline, draft)
        updates["pipeline"] = _pipeline(connector.get("pipeline"), pipeline, pipeline_flags)
    if rules is not None:
        updates["filtering"] = _checked_rules(ctx, merged_copy(connector.doc, updates), _draft_rules(connector, rules),
                                              draft)
    if not updates:
        raise click.UsageError("update-connector: nothing to change (use --set, --schedule, --index-name, ...)")
    updates["updated_at"] = now_iso()
    return updates


_RULES_SHAPES = ('a JSON list of basic rules [{"policy": "exclude", "field": "ext", "rule": "equals", '
                 '"value": ".tmp"}], '
                 'or {"rules": [...basic rules...], "advanced_snippet": ADVANCED} where ADVANCED is what the source '
                 'documents (docs/sources/), e.g. [{"tables": ["orders"], "query": "SELECT ..."}] for SQL sources')
_BASIC_RULE_KEYS = {"id", "policy", "field", "rule", "value", "order", "created_at", "updated_at"}


def _parse_rules(rules_json: str) -> tuple[list[dict[str, Any]], Any]:
    """``--rules`` as ``(basic rules, advanced snippet value)``; a shape it cannot be is refused."""
    try:
        given = json.loads(rules_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--rules: expected JSON, {exc}") from None
    if isinstance(given, list):
        not_basic = [n for n, r in enumerate(given, 1)
                     if not (isinstance(r, dict) and r and set(r) <= _BASIC_RULE_KEYS)]
        if not_basic:
            raise ConfigError(f"--rules: rule {not_basic[0]} is not a basic rule (keys: policy, field, rule, value); "
                              "advanced rules go under advanced_snippet: --rules '{\"advanced_snippet\": [...]}'. "
                              f"Expected {_RULES_SHAPES}")
        given = {"rules": given}
    if not isinstance(given, dict) or not given or set(given) - {"rules", "advanced_snippet"}:
        raise ConfigError(f"--rules: expected {_RULES_SHAPES}")
    rules = given.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError(f"--rules: rules must be a list; expected {_RULES_SHAPES}")
    snippet = given.get("advanced_snippet", {})
    # Kibana's stored shape, {"value": ..., "created_at": ...}, given back: its value (never nested twice).
    if isinstance(snippet, dict) and "value" in snippet and set(snippet) <= {"value", "created_at", "updated_at"}:
        snippet = snippet["value"]
    return rules, snippet


def _draft_rules(connector: Any, rules_json: str) -> list[dict[str, Any]]:
    """Write rules as an ``edited`` draft, as Kibana does; the daemon validates and activates."""
    from launcher.protocol import default_filtering

    given_rules, snippet = _parse_rules(rules_json)
    filtering = connector.get("filtering") or default_filtering()
    entry = next((f for f in filtering if isinstance(f, dict) and f.get("domain") == "DEFAULT"), None)
    if entry is None:
        entry = default_filtering()[0]
        filtering.append(entry)
    default_rule = default_filtering()[0]["draft"]["rules"][0]
    stamp = now_iso()
    rules = [r for r in given_rules if isinstance(r, dict) and r.get("id") != "DEFAULT"]
    for order, rule in enumerate(rules, start=1):
        rule.setdefault("id", f"rule-{order}")
        rule.setdefault("order", order)
        rule.setdefault("created_at", stamp)
        rule.setdefault("updated_at", stamp)
    entry["draft"] = {
        "rules": rules + [{**default_rule, "order": len(rules) + 1}],
        "advanced_snippet": {"value": snippet, "created_at": stamp, "updated_at": stamp},
        "validation": {"state": "edited", "errors": []},
    }
    return filtering


def _checked_rules(ctx: _Context, connector: dict[str, Any], filtering: list[dict[str, Any]],
                   draft: bool) -> list[dict[str, Any]]:
    """``filtering`` with its draft checked as the service would: the basic rules, and the advanced
    rules as the source itself validates them (against its server: tables, queries). An invalid
    draft is refused; a valid one is activated at once (the next sync uses it), as the service
    does with a draft it validated. ``--draft`` saves advanced rules unchecked, for the service
    to validate (``edited``)."""
    from launcher.index_store import default_domain, filtering_with_validation
    from launcher.maintenance import advanced_rules_problems
    from transforms.sync_rules import validate_rules

    rules_draft = (default_domain(filtering) or {}).get("draft") or {}
    problems = [m for e in validate_rules(rules_draft.get("rules") or []) for m in e.get("messages") or []]
    snippet = (rules_draft.get("advanced_snippet") or {}).get("value")
    if snippet:
        cls = _source_class(ctx.config, str(connector.get("service_type")))
        if not getattr(cls, "advanced_rules_enabled", False):
            problems.append(f"advanced_snippet: {display_name(cls)} sources do not support advanced sync rules")
        elif not draft:
            problems += [f"advanced_snippet: {m}" for m in advanced_rules_problems(ctx.config, connector, cls, snippet)]
    if problems:
        raise ConfigError("--rules: the sync rules are invalid, nothing saved"
                          + ("" if draft else " (--draft saves advanced rules unchecked, for the service to validate)")
                          + ":", problems)
    if snippet and draft:
        return filtering
    return filtering_with_validation(filtering, {"state": "valid", "errors": []}, activate=True) or filtering


def action_delete_connector(ctx: _Context, *, connector_id: str | None, **_: Any) -> int:
    connector_id = _require(connector_id, "--connector-id", "delete-connector")
    connector = get_connector(ctx.store, connector_id)
    if connector is None or not ctx.store.delete_connector(connector_id):
        raise ConnectorError(f"no connector with id {connector_id!r}")
    if isinstance(connector.index_name, str):
        release_index(ctx.es, connector.index_name, connector_id)
    try:
        stream = _release_deleted_stream(ctx, connector)
    except Exception as exc:  # noqa: BLE001 - the connector is gone: say what is left, and fail
        click.echo(f"connector {connector_id} deleted, but what its source keeps for its continuous sync could not "
                   f"be released: {format_error(exc)}. Release it by hand (docs/sources/{connector.service_type}.md, "
                   "continuous sync)", err=True)
        return 1
    if ctx.as_json:
        _echo_json({"id": connector_id, "result": "deleted", **({"stream": stream} if stream else {})})
    else:
        click.echo(f"connector {connector_id} deleted" + (f"; {stream}" if stream else ""))
    return 0


def _release_deleted_stream(ctx: _Context, connector: Any) -> str | None:
    """What became of the stream a deleted connector's source kept (a PostgreSQL replication slot
    keeps WAL until dropped): launcher.continuous_jobs.release_deleted; None: it did not stream."""
    from launcher.secret_refs import resolve_references

    service_type = str(connector.service_type)
    if service_type not in ctx.config.sources:
        return None
    configuration = typed_fields(resolve_references(connector.get("configuration") or {}, ctx.config.secrets))
    return release_deleted(ctx.store, connector, _source_class(ctx.config, service_type), configuration,
                           ctx.config.source_settings.get(service_type, {}))


def action_connectors(ctx: _Context, *, connector_id: str | None = None, **_: Any) -> int:
    connectors = search_connectors(ctx.store, connector_ids=[connector_id] if connector_id else None)
    held = _documents_in(ctx.es, {c.index_name for c in connectors if isinstance(c.index_name, str)})
    streams = _streams_of(ctx, [c.id for c in connectors])
    if ctx.as_json:
        _echo_json([{"id": c.id, **{**c.doc, "configuration": redact(c.get("configuration"))},
                     "index_document_count": held.get(c.index_name), "sync_rules_error": draft_rules_problem(c.doc),
                     "stream": streams.get(c.id)} for c in connectors])
        return 0
    rows = [[c.id, c.get("name"), c.service_type, c.index_name, held.get(c.index_name, "no index"), c.get("status"),
             c.get("last_sync_status"), _when(c.get("last_synced")), c.get("last_indexed_document_count"),
             c.get("last_deleted_document_count"), describe_stream(streams[c.id]) if c.id in streams else None,
             "; ".join(str(e) for e in (c.get("error"), draft_rules_problem(c.doc)) if e) or None] for c in connectors]
    _table("Connectors", ["id", "name", "service type", "index", "docs in index", "status", "last sync",
                          "last synced", "last sync indexed", "last sync deleted", "continuous sync", "error"], rows)
    return 0


def _streams_of(ctx: _Context, connector_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Connector id -> its continuous job's summary (running, suspended, or pending: not claimed yet): lag,
    position, last acknowledgement."""
    if not connector_ids:
        return {}
    found = ctx.store.list_jobs(connector_ids=connector_ids,
                                statuses=["in_progress", "suspended", "canceling", "pending"],
                                size=max(100, 3 * len(connector_ids)), newest_first=True)
    streams: dict[str, dict[str, Any]] = {}
    for job in found:
        if is_continuous(job.doc) and job.connector_id not in streams:
            streams[job.connector_id] = stream_summary(job.id, job.status, stream_state(job.doc))
    return streams


def _documents_in(es: Any, indices: set[str]) -> dict[str, int]:
    """How many documents each index holds now (an index that does not exist is left out)."""
    held = {}
    for index in sorted(indices):
        # 503: an index another process is creating right now, its shard not started yet.
        answer = es.options(ignore_status=(404, 503)).count(index=index)
        if isinstance(answer.body, dict) and "count" in answer.body:
            held[index] = int(answer["count"])
    return held


def _when(stamp: Any) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SS`` (UTC), for tables."""
    from datetime import datetime, timezone

    if not isinstance(stamp, str) or not stamp:
        return ""
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if parsed.tzinfo:
        parsed = parsed.astimezone(timezone.utc)
    return parsed.strftime("%Y-%m-%d %H:%M:%S")


def _duration(job: dict[str, Any]) -> str:
    from datetime import datetime, timezone

    start = job.get("started_at")
    if not start:
        return ""
    end = job.get("completed_at") or datetime.now(timezone.utc).isoformat()
    try:
        seconds = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                   - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    except (ValueError, TypeError):
        return ""
    return f"{seconds:.1f}s"


def action_jobs(ctx: _Context, *, connector_id: str | None, **_: Any) -> int:
    found = ctx.store.list_jobs(connector_ids=[connector_id] if connector_id else None, size=100, newest_first=True)
    jobs = []
    for job in found:
        doc = dict(job.doc)
        connector = dict(doc.get("connector") or {}) if isinstance(doc.get("connector"), dict) else {}
        connector["configuration"] = redact(connector.get("configuration"))
        doc["connector"] = connector
        jobs.append({"id": job.id, **doc})
    if ctx.as_json:
        _echo_json(jobs)
        return 0
    rows = [[j["id"], j["connector"].get("id"), _job_kind(j), j.get("trigger_method"), j.get("status"),
             _when(j.get("created_at")), j.get("indexed_document_count"), j.get("deleted_document_count"),
             j.get("total_document_count"), _dead_letter_count(j), _duration(j),
             "; ".join([*([str(j["error"])] if j.get("error") else []), *(f"warning: {w}" for w in _warnings(j))])
             or None] for j in jobs]
    _table("Sync jobs", ["id", "connector", "type", "trigger", "status", "created", "indexed", "deleted", "total",
                         "dead letters", "duration", "error"], rows)
    return 0


def _job_kind(job: dict[str, Any]) -> str:
    """The job type; a continuous sync says so, with its lag (commit -> Elasticsearch acknowledgement)."""
    metadata = job.get("metadata") if isinstance(job.get("metadata"), dict) else {}
    if metadata.get("continuous") is not True:
        return str(job.get("job_type") or "")
    summary = stream_summary(str(job.get("id")), job.get("status"), stream_state(job))
    lag, position = summary["lag_seconds"], summary["position"]
    return (f"{job.get('job_type')} (continuous" + (f", lag {lag:.2f}s" if isinstance(lag, (int, float)) else "")
            + (f", at {position}" if position else "") + ")")


def _dead_letters_of(job: dict[str, Any]) -> dict[str, Any]:
    metadata = job.get("metadata") if isinstance(job.get("metadata"), dict) else {}
    return metadata.get("dead_letters") if isinstance(metadata.get("dead_letters"), dict) else {}


def _warnings(job: dict[str, Any]) -> list[str]:
    """What the job did not do as asked, though it ran (``metadata.warnings``: rules it ran without, a missing
    ingest pipeline)."""
    metadata = job.get("metadata") if isinstance(job.get("metadata"), dict) else {}
    warnings = metadata.get("warnings")
    return [str(w) for w in warnings] if isinstance(warnings, list) else []


def _dead_letter_count(job: dict[str, Any]) -> Any:
    """The job's dead letters as its document records them (None: not known)."""
    return _dead_letters_of(job).get("count")


def action_sync(ctx: _Context, *, connector_id: str | None, job_type: str, wait: bool, timeout: float,
                keep_waiting: bool = False, unclaimed_after: float = UNCLAIMED_AFTER, reindex: bool = False,
                **_: Any) -> int:
    connector_id = _require(connector_id, "--connector-id", "sync")
    if reindex and job_type != "full":
        raise click.UsageError(f"--reindex re-writes every document of a full sync; not with --job-type {job_type}")
    connector = get_connector(ctx.store, connector_id)
    if connector is None or connector.get("deleted"):
        raise ConnectorError(f"no connector with id {connector_id!r}")
    fqn = ctx.config.sources.get(connector.service_type) if isinstance(connector.service_type, str) else None
    if fqn is not None and job_type == "incremental":
        cls = load_source_class(fqn)
        if not getattr(cls, "incremental_sync_enabled", False):
            raise ConnectorError(f"{display_name(cls)} sources do not support incremental syncs", connector_id)
    if fqn is not None and job_type == "access_control":
        from sources.base import supports_access_control

        cls = load_source_class(fqn)
        if not supports_access_control(cls):
            raise ConnectorError(f"{display_name(cls)} sources do not support document-level security, so they have "
                                 "no access-control syncs; use --job-type full or incremental", connector_id)
    job_id = create_job(ctx.store, connector, job_type=job_type, trigger_method="on_demand",
                        metadata={"reindex": True} if reindex else None)
    if not wait:
        if ctx.as_json:
            _echo_json({"job_id": job_id})
        else:
            click.echo(f"job {job_id} pending ({job_type} sync of connector {connector_id})")
        return 0
    return _follow(ctx, job_id, timeout, keep_waiting, unclaimed_after)


def _waits_behind(ctx: _Context, job: Any) -> str | None:
    """What a pending job waits for: another job of its connector that holds the lock, if any."""
    if not job.connector_id:
        return None
    others = [j for j in ctx.store.list_jobs(connector_ids=[job.connector_id], statuses=["in_progress", "canceling"],
                                             size=5) if j.id != job.id]
    if not others:
        return None
    other = others[0].doc
    return (f"job {job.id} waits behind job {others[0].id} of the same connector ({other.get('status')} on "
            f"{other.get('worker_hostname') or 'an unknown host'} since {_when(other.get('started_at')) or '?'} UTC); "
            "it starts when that one ends")


def _unclaimed(ctx: _Context, job: Any, waited: float) -> tuple[str, bool]:
    """What to say about a job still ``pending`` after ``waited`` seconds; and whether a service looks alive.

    A service serving the connector writes its ``last_seen`` at least every
    ``service.heartbeat`` seconds; a connector not seen for longer (or never) has no
    running service, and nobody will ever claim its jobs.
    """
    from datetime import datetime, timezone

    from launcher.scheduling import parse_time

    connector = get_connector(ctx.store, job.connector_id) if job.connector_id else None
    doc = connector.doc if connector is not None else {}
    seen = parse_time(doc.get("last_seen"))
    age = (datetime.now(timezone.utc) - seen).total_seconds() if seen else None
    alive = age is not None and age <= 2 * ctx.config.service.heartbeat + 60
    where = (f"connector {job.connector_id} (service type {doc.get('service_type')!r}, status {doc.get('status')!r}, "
             f"last seen {'never' if seen is None else f'{age:,.0f}s ago'})")
    if alive:
        return (f"job {job.id} still pending after {waited:,.0f}s: a service serves {where} but has not claimed it yet "
                "(all its sync slots busy, or another job of this connector runs); waiting"), True
    return (f"job {job.id} still pending after {waited:,.0f}s: no service has claimed it. No running service "
            f"seems to serve {where}: start one whose config.yml has service type {doc.get('service_type')!r} "
            "under sources:, or cancel the job. Use --keep-waiting to wait for one"), False


class _Progress:
    """A job's progress on stderr: one live line on a terminal, else one line per change of status.

    Messages (``say``) always get lines of their own, above the live line, never glued to it.
    """

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.live = None
        self._last_status: str | None = None
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def say(self, message: str) -> None:
        self.console.print(message, markup=False, soft_wrap=True)

    def update(self, job_id: str, doc: dict[str, Any], elapsed: float) -> None:
        status = str(doc.get("status"))
        indexed = int(doc.get("indexed_document_count") or 0)
        line = f"job {job_id} {status}: {indexed:,} indexed, {int(doc.get('deleted_document_count') or 0):,} deleted"
        if elapsed >= 1 and indexed / elapsed >= 1:
            line += f", {indexed / elapsed:,.0f} docs/s"
        line += f" ({elapsed:,.0f}s)"
        if self.live is not None:
            from rich.text import Text

            self.live.update(Text(line))
        elif status != self._last_status:
            self.say(line)
        self._last_status = status

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()  # leaves the last line, and the cursor on the next one
            self.live = None


def _follow(ctx: _Context, job_id: str, timeout: float, keep_waiting: bool = False,
            unclaimed_after: float = UNCLAIMED_AFTER) -> int:
    """Show live progress until the job ends; exit code 0 only if it completed.

    A job nobody claims within ``unclaimed_after`` seconds is reported (who should
    claim it, and when that service was last seen); unless ``keep_waiting``, the wait
    ends there (exit 1) when no running service serves the connector. Ctrl-C stops the
    wait, not the job: it says so, and how to cancel the job (exit 130).
    """
    progress = _Progress()
    started = time.monotonic()
    job = None
    said = None
    reported = False
    try:
        while time.monotonic() - started < timeout:
            job = get_job(ctx.store, job_id)
            if job is None:
                raise ConnectorError(f"job {job_id} was deleted")
            doc = job.doc
            blocker = _waits_behind(ctx, job) if doc.get("status") in ("pending", "suspended") else None
            if blocker != said and blocker is not None:
                progress.say(blocker)
            said = blocker
            elapsed = time.monotonic() - started
            if doc.get("status") == "pending" and elapsed >= unclaimed_after and not reported:
                reported = True
                message, alive = _unclaimed(ctx, job, elapsed)
                progress.say(message)
                if not alive and not keep_waiting:
                    progress.stop()
                    click.echo(f"job {job_id} left pending (no service has claimed it)", err=True)
                    return 1
            progress.update(job_id, doc, elapsed)
            if doc.get("status") in FINAL_STATUSES:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        progress.stop()
        status = job.doc.get("status") if job is not None else "pending"
        click.echo(f"\nstopped waiting; job {job_id} goes on ({status}). To cancel it: "
                   f"{_command_line(ctx, '--action', 'cancel', '--job-id', job_id)}", err=True)
        return 130
    finally:
        progress.stop()
    if job is None or job.doc.get("status") not in FINAL_STATUSES:
        click.echo(f"job {job_id} still {job.doc.get('status') if job else 'unknown'} after {timeout:g}s", err=True)
        return 1
    doc = job.doc
    if ctx.as_json:
        _echo_json({"id": job_id, **{k: v for k, v in doc.items() if k != "connector"}})
    else:
        click.echo(_summary(job_id, doc))
        for warning in _warnings(doc):
            click.echo(f"warning: {warning}")
        dead = _dead_letter_count(doc)
        if dead:
            click.echo(f"{dead} document(s) could not be indexed: "
                       f"{_command_line(ctx, '--action', 'dead-letters', '--job-id', job_id)}")
    return 0 if doc.get("status") == "completed" else 1


def _documents(count: Any) -> str:
    """``1 document``, ``2 documents`` (``1,000 documents``)."""
    number = int(count or 0)
    return f"{number:,} document{'' if number == 1 else 's'}"


def _summary(job_id: str, doc: dict[str, Any]) -> str:
    """How a job ended, in one sentence."""
    line = (f"job {job_id} {doc.get('status')} in {_duration(doc) or '?'}: "
            f"{_documents(doc.get('indexed_document_count'))} indexed, "
            f"{int(doc.get('deleted_document_count') or 0):,} deleted; "
            f"the index holds {int(doc.get('total_document_count') or 0):,}")
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    if metadata.get("reindex_reason"):
        line += f". Re-indexed: {metadata['reindex_reason']}"
    return line + (f". Error: {doc.get('error')}" if doc.get("error") else "")


def _command_line(ctx: _Context, *args: str) -> str:
    """``elastic-ingest`` with this run's config file and ``args``, ready to paste into a shell."""
    import shlex

    config = ["-c", ctx.config_file] if ctx.config_file else []
    return shlex.join(["elastic-ingest", *config, *args])


def action_cancel(ctx: _Context, *, job_id: str | None, **_: Any) -> int:
    job_id = _require(job_id, "--job-id", "cancel")
    job = get_job(ctx.store, job_id)
    if job is None:
        raise ConnectorError(f"no job with id {job_id!r}")
    if job.status in FINAL_STATUSES:
        raise ConnectorError(f"job {job_id} already ended ({job.status})")
    status = ctx.store.cancel_job(job)
    if ctx.as_json:
        _echo_json({"id": job_id, "status": status})
    else:
        click.echo(f"job {job_id} {status}")
    return 0


def action_dead_letters(ctx: _Context, *, job_id: str | None, **_: Any) -> int:
    job_id = _require(job_id, "--job-id", "dead-letters")
    from transforms.dead_letter_files import dead_letter_folder, dead_letter_location, read_dead_letters_from

    job = get_job(ctx.store, job_id)
    if job is None:
        raise ConnectorError(f"no job with id {job_id!r}")
    recorded = _dead_letters_of(job.doc)
    # Where the job wrote them (recorded absolute); a job from before that was recorded: this config's.
    folder = recorded.get("location") or dead_letter_folder(dead_letter_location(ctx.config.pipeline.dead_letters),
                                                            job_id)
    letters = list(read_dead_letters_from(folder))
    if ctx.as_json:
        _echo_json(letters)
        return 0
    count = recorded.get("count")
    note = f" (the job counted {count})" if count is not None and count != len(letters) else ""
    click.echo(f"job {job_id}: {len(letters)} dead letter(s) in {folder}{note}")
    if letters:
        rows = [[d["doc_id"], d["operation"], d["stage"], d["error_type"], d["error_message"][:200]] for d in letters]
        _table("Dead letters", ["doc id", "operation", "stage", "error type", "error"], rows)
    return 0


def _index_name_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    problem = index_name_problem(value) if value is not None else None
    if problem:
        raise click.BadParameter(problem)
    return value


_HANDLERS: dict[str, Callable[..., int]] = {
    "poll": action_poll, "list": action_list, "create-connector": action_create_connector,
    "update-connector": action_update_connector, "delete-connector": action_delete_connector,
    "connectors": action_connectors, "sync": action_sync, "cancel": action_cancel, "jobs": action_jobs,
    "dead-letters": action_dead_letters,
}
assert set(_HANDLERS) == set(ACTIONS)

_ACTION_HELP = "What to do:\n\n" + "\n\n".join(f"{name}: {text}" for name, text in ACTIONS.items())


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--action", type=click.Choice(list(ACTIONS)), default="poll", show_default=True, help=_ACTION_HELP)
@click.option("-c", "--config-file", type=click.Path(dir_okay=False), default=None,
              help="config.yml to use. Without -c: the config.yml shipped with the package (as Elastic's service "
                   "does), never ./config.yml; when a ./config.yml exists that is not the one read, every action says "
                   "so on stderr, naming both. The daemon logs the file it loaded")
@click.option("--debug", is_flag=True, help="debug logging, and tracebacks on errors")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON output")
@click.option("--connector-id", help="the connector to act on (or to create with this id)")
@click.option("--service-type", help="create-connector, list: a service type from config.yml sources")
@click.option("--index-name", callback=_index_name_option,
              help="create/update-connector: the content index (Elasticsearch's rules: lowercase, no spaces, "
                   "none of \\ / * ? \" < > | , # :, not starting with _ - + or .)")
@click.option("--name", help="create/update-connector: display name")
@click.option("--set", "set_values", multiple=True, metavar="FIELD=VALUE",
              help="create/update-connector: a configuration value (repeatable)")
@click.option("--set-env", "set_env", multiple=True, metavar="FIELD=ENV_VAR",
              help="create/update-connector: a sensitive field stores the reference ${env:ENV_VAR}, which the "
                   "service resolves in its own environment (config.yml secrets.env must allow it); another field "
                   "stores the variable's value. Secrets never appear in process arguments (repeatable)")
@click.option("--draft", is_flag=True,
              help="create/update-connector: save a configuration that still lacks required values; the connector "
                   "stays needs_configuration (no syncs) until they are set")
@click.option("--schedule", multiple=True, metavar="TYPE=CRON",
              help="create/update-connector: e.g. full='0 0 * * * ?' (Quartz cron, UTC) or full=off")
@click.option("--pipeline", help="create/update-connector: ingest pipeline name; it must exist (unless --draft)")
@click.option("--pipeline-flag", "pipeline_flags", multiple=True, metavar="FLAG=BOOL",
              help="create/update-connector: extract_binary_content, reduce_whitespace or run_ml_inference "
                   "(repeatable)")
@click.option("--rules", help="create/update-connector: sync rules as JSON, a list of basic rules or "
                              "{\"rules\": [...], \"advanced_snippet\": ADVANCED} (ADVANCED: as the source's page "
                              "in docs/sources shows); "
                              "checked before saving, advanced rules by the source against its server (--draft: "
                              "saved unchecked, the service validates it)")
@click.option("--job-type", type=click.Choice(["full", "incremental", "access_control"]), default="full",
              show_default=True, help="sync: which kind of job (incremental and access_control only for sources "
                                      "that support them: incremental syncs, document-level security)")
@click.option("--job-id", help="cancel/dead-letters: the job")
@click.option("--wait", is_flag=True, help="sync: follow the job with a live progress display until it ends")
@click.option("--reindex", is_flag=True,
              help="sync: a full sync that writes every document again, changed or not (job metadata.reindex)")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="sync --wait: give up after seconds")
@click.option("--unclaimed-after", type=float, default=UNCLAIMED_AFTER, show_default=True,
              help="sync --wait: after this many seconds pending, say who should claim the job and whether it runs")
@click.option("--keep-waiting", is_flag=True,
              help="sync --wait: keep waiting for a job no running service has claimed (by default the wait ends, "
                   "exit 1, when the connector's service has not been seen)")
def _command(action: str, config_file: str | None, debug: bool, as_json: bool, **options: Any) -> None:
    """elastic-ingest: sync data sources into Elasticsearch (BYOC connector service)."""
    ctx = _Context(config_file, debug, as_json)
    log_format = "text"
    try:
        log_format = ctx.config.service.log_format if action == "poll" else "text"
    except ConfigError:
        pass
    setup_logging(debug=debug, log_format=log_format)
    unused = unused_local_config(config_file)
    if unused is not None:  # never silent: the file beside the user is not the one read
        note = (f"note: no -c given, so this reads the packaged {default_config_path()}, not {unused} in this folder "
                f"(use -c {unused.name} to read that one)")
        if action == "poll":
            _LOGGER.warning("%s", note)
        else:
            click.echo(note, err=True)
    try:
        code = _HANDLERS[action](ctx, **options)
    except (click.UsageError, click.BadParameter):
        raise
    except IngestError as exc:
        if debug:
            _LOGGER.exception("failed")
        click.echo(format_error(exc), err=True)
        code = 1
    except Exception as exc:  # noqa: BLE001 - e.g. Elasticsearch refusing a request
        from elasticsearch import ApiError, TransportError

        if debug or not isinstance(exc, (ApiError, TransportError, OSError)):
            _LOGGER.exception("unexpected failure")
        click.echo(format_error(exc), err=True)
        code = 1
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    _command.main(args=argv, prog_name="elastic-ingest")


if __name__ == "__main__":
    main()
