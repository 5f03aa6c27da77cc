"""Connector maintenance: one poll's work on one connector document (PROTOCOL.md section 2).

For each served connector, at each poll::

    fill in every protocol field the writer left out (Elastic's CLI, an older Kibana)
    refuse a document that is wrong (bad index name, unknown service type, bad cron)
    complete its configuration from the source's schema (a new one: needs_configuration)
    write the source's features
    check it (at most every service.heartbeat s, or at once when it changed): the index is
        not another connector's, secret references resolve, the configuration validates,
        the source builds and answers its ping -> connected, else error with the reason
    validate an edited sync-rules draft (a valid one becomes the active rules)
    honour sync_now (an on-demand job) and create the scheduled jobs that are due

Writes that decide something (a configuration completed, sync_now reset) are conditional
on the ``_seq_no`` read, so a client writing at the same moment wins and several service
instances never act twice. A connector whose document is wrong gets the error in its own
document; the others are served.

Example usage::

    maintenance = ConnectorMaintenance(config, store)
    for connector in store.list_connectors(service_types=["dir"]):
        maintenance.maintain(connector)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from launcher.config import Config
from launcher.continuous_jobs import RETRY_AFTER, ensure_continuous_job, release_if_off
from launcher.configuration import complete_configuration, typed_fields, validate_configuration
from launcher.index_ownership import check_index_ownership
from launcher.index_store import default_domain
from launcher.protocol import CONNECTOR_DEFAULTS, connector_problems, create_job, with_protocol_fields
from launcher.scheduled_jobs import create_due_jobs, cron_problems
from launcher.secret_refs import resolve_references
from launcher.store import Connector, ConnectorStore
from sources.driver import SourceDriver, build_source
from sources.errors import IndexConflict, IngestError, SecretReferenceError, format_error
from sources.registry import load_source_class
from transforms.sync_rules import validate_rules

__all__ = ["ConnectorMaintenance", "advanced_rules_problems"]

_LOGGER = logging.getLogger(__name__)


def _contains(current: Any, wanted: Any) -> bool:
    """Whether ``current`` already holds ``wanted`` (extra keys, e.g. written by Kibana, allowed)."""
    if isinstance(wanted, Mapping):
        return isinstance(current, Mapping) and all(_contains(current.get(k), v) for k, v in wanted.items())
    return current == wanted


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def advanced_rules_problems(config: Config, connector: Mapping[str, Any], source_class: type,
                            snippet: Any) -> list[str]:
    """What the source says is wrong with an advanced-rules snippet (its own failure included),
    built from the connector document ``connector`` and config.yml's settings for its type."""
    driver = None
    try:
        configuration = resolve_references(connector.get("configuration") or {}, config.secrets)
        source = build_source(source_class, typed_fields(configuration),
                              config.source_settings.get(connector.get("service_type"), {}))
        driver = SourceDriver(source)
        if not hasattr(source, "validate_advanced_rules"):
            return []
        return list(driver.call(source.validate_advanced_rules, snippet) or [])
    except Exception as exc:  # noqa: BLE001 - the source's own error: the draft's problem
        return [format_error(exc)]
    finally:
        if driver is not None:
            driver.close()


class ConnectorMaintenance:
    """Keeps served connector documents current (see the module docstring).

    It remembers, per connector, when its configuration was last checked (a ping costs a
    connection to the source) and whether its document was found wrong (once fixed, it is
    checked again at once).
    """

    def __init__(self, config: Config, store: ConnectorStore):
        self.config = config
        self.store = store
        self._checked: dict[str, tuple[str, float]] = {}  # connector id -> (what was checked, when)
        self._document_errors: dict[str, str] = {}

    def maintain(self, connector: Connector) -> None:
        """One poll's work on ``connector``; conflicts and 404s (changed or deleted meanwhile) propagate."""
        missing = with_protocol_fields(connector.doc, CONNECTOR_DEFAULTS)
        if missing:  # e.g. written by Elastic's CLI or an older Kibana: every protocol field, with its default
            self._write(connector, missing, conditional=True)
        problems = connector_problems(connector.doc)
        if problems:
            self._document_error(connector, "; ".join(problems))
            return
        fqn = self.config.sources.get(connector.service_type)
        if fqn is None:
            self._document_error(connector, f"service_type {connector.service_type!r} is not served here; known: "
                                            f"{', '.join(sorted(self.config.sources))}")
            return
        try:
            source_class = load_source_class(fqn)
        except IngestError as exc:
            self._document_error(connector, format_error(exc))
            return
        configuration = connector.get("configuration")
        schema = source_class.get_default_configuration() if hasattr(source_class, "get_default_configuration") else {}
        if not configuration:
            completed, _ = complete_configuration({}, schema)
            # Conditional: a client writing its values at the same moment must win.
            self._write(connector, {"configuration": completed, "status": "needs_configuration"}, conditional=True)
            return
        completed, changed = complete_configuration(configuration, schema)
        if changed:
            self._write(connector, {"configuration": completed}, conditional=True)
        features = source_class.features() if hasattr(source_class, "features") else None
        if features is not None and not _contains(connector.get("features"), features):
            self._write(connector, {"features": features})
        if connector.get("status") in ("created", "needs_configuration"):
            return
        schedule_problems = cron_problems(connector)
        if schedule_problems:
            self._document_error(connector, "; ".join(schedule_problems))
        else:
            if self._document_errors.pop(connector.id, None) is not None:
                self._checked.pop(connector.id, None)  # the document was fixed: check it again now
            self._check(connector, source_class)
        self._validate_drafts(connector, source_class)
        self._sync_now(connector)
        if not schedule_problems:
            grace = timedelta(seconds=max(60.0, 3 * self.config.service.idling))
            create_due_jobs(self.store, connector, source_class, created_grace=grace)
            self._continuous(connector, source_class)

    def _continuous(self, connector: Connector, source_class: type) -> None:
        """Keep the connector's continuous job (launcher/continuous_jobs.py); release its stream once off."""
        retry_after = min(RETRY_AFTER, max(5.0, 10 * self.config.service.idling))
        if ensure_continuous_job(self.store, connector, source_class, retry_after=retry_after) is not None:
            return
        try:
            configuration = typed_fields(resolve_references(connector.get("configuration") or {}, self.config.secrets))
            release_if_off(self.store, connector, source_class, configuration, self._settings(connector))
        except Exception as exc:  # noqa: BLE001 - retried next poll
            _LOGGER.warning("connector %s: could not release its stream: %s", connector.id, format_error(exc))

    def set_error_quietly(self, connector: Connector, message: str) -> None:
        """Put ``message`` on the connector; a failure to write it is logged, not raised."""
        try:
            self._set_error(connector, message)
        except Exception as exc:  # noqa: BLE001 - best effort; logged
            _LOGGER.warning("connector %s: %s (and writing it failed: %s)", connector.id, message, format_error(exc))

    # -- writes --------------------------------------------------------------------
    def _write(self, connector: Connector, fields: Mapping[str, Any], *, conditional: bool = False) -> None:
        """Update the connector and keep our copy current (the store tracks its concurrency token)."""
        self.store.update_connector(connector.id, fields, expected=connector, conditional=conditional)

    def _set_error(self, connector: Connector, message: str) -> None:
        if connector.get("status") != "error" or connector.get("error") != message:
            _LOGGER.warning("connector %s: %s", connector.id, message)
            self._write(connector, {"status": "error", "error": message})

    def _document_error(self, connector: Connector, message: str) -> None:
        """An error in the document itself; once fixed, the connector is checked again at once."""
        self._document_errors[connector.id] = message
        self._set_error(connector, message)

    # -- checks --------------------------------------------------------------------
    def _settings(self, connector: Connector) -> dict[str, Any]:
        """The operator's settings for the connector's source (config.yml)."""
        return self.config.source_settings.get(connector.service_type, {})

    def _check(self, connector: Connector, source_class: type) -> None:
        """connected, or error with the reason: ownership of the index, secrets, configuration, ping."""
        configuration = connector.get("configuration") or {}
        key = _fingerprint([configuration, connector.index_name])
        last = self._checked.get(connector.id)
        recently = last is not None and last[0] == key and time.monotonic() - last[1] < self.config.service.heartbeat
        if recently and connector.get("status") in ("connected", "error"):
            return
        self._checked[connector.id] = (key, time.monotonic())
        if isinstance(connector.index_name, str) and connector.index_name:
            try:
                check_index_ownership(self.store, connector.index_name, connector.id)
            except IndexConflict as exc:
                self._set_error(connector, format_error(exc))
                return
        try:
            configuration = resolve_references(configuration, self.config.secrets)
        except SecretReferenceError as exc:
            self._set_error(connector, f"Invalid configuration: {exc}")
            return
        problems = validate_configuration(configuration)
        if problems:
            self._set_error(connector, "Invalid configuration: " + "; ".join(problems))
            return
        try:
            source = build_source(source_class, typed_fields(configuration), self._settings(connector))
            driver = SourceDriver(source)
            try:
                if hasattr(source, "validate_config"):
                    driver.call(source.validate_config)
                if hasattr(source, "ping"):
                    driver.call(source.ping)
            finally:
                driver.close()
        except Exception as exc:  # noqa: BLE001 - any source failure is the connector's error
            self._set_error(connector, format_error(exc))
            return
        if connector.get("status") != "connected" or connector.get("error") is not None:
            self._write(connector, {"status": "connected", "error": None})

    def _validate_drafts(self, connector: Connector, source_class: type) -> None:
        """Validate an ``edited`` DEFAULT draft; a valid one becomes the active rules."""
        entry = default_domain(connector.get("filtering"))
        draft = entry.get("draft") if entry is not None else None
        if not isinstance(draft, dict) or (draft.get("validation") or {}).get("state") != "edited":
            return
        errors = validate_rules(draft.get("rules") or [])
        snippet = (draft.get("advanced_snippet") or {}).get("value")
        if snippet:
            if not getattr(source_class, "advanced_rules_enabled", False):
                errors.append({"ids": ["advanced_snippet"],
                               "messages": [f"{source_class.__name__} does not support advanced sync rules"]})
            else:
                messages = self._advanced_rules_problems(connector, source_class, snippet)
                if messages:
                    errors.append({"ids": ["advanced_snippet"], "messages": messages})
        validation = {"state": "invalid" if errors else "valid", "errors": errors}
        self.store.update_filtering_validation(connector.id, validation, activate=not errors, expected=connector)

    def _advanced_rules_problems(self, connector: Connector, source_class: type, snippet: Any) -> list[str]:
        return advanced_rules_problems(self.config, connector.doc, source_class, snippet)

    def _sync_now(self, connector: Connector) -> None:
        if connector.get("sync_now") is not True:
            return
        # Reset first, conditionally: only the instance that resets it creates the job.
        self._write(connector, {"sync_now": False}, conditional=True)
        job_id = create_job(self.store, connector, job_type="full", trigger_method="on_demand")
        _LOGGER.info("connector %s: sync_now -> on-demand job %s", connector.id, job_id)
