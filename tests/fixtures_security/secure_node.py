"""A private Elasticsearch node with security enabled, for the least-privilege tests.

``scripts/elasticsearch`` on ``SECURE_ES_PORT`` (default: ``FAULT_ES_PORT`` + 10, i.e.
9230) with ``ES_ELASTIC_PASSWORD``: authentication, roles and privileges are enforced,
over plain HTTP. Started on first use and left running, as the fault node is.

The test distribution has no ``analysis-common`` module, so the ``.security`` index (native
users, API keys) cannot be created on it: users and roles live in the file realm
(``roles.yml``, ``users``, ``users_roles`` in the node's config folder), which
Elasticsearch reloads within a second here. :func:`set_file_users` writes them and waits
until each user authenticates with its roles.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import yaml

from tests.helpers import REPO, skip_or_fail

__all__ = ["SECURE_ES_PORT", "SECURE_ES_URL", "SUPERUSER", "start_secure_node", "set_file_users", "user_client"]

SECURE_ES_PORT = int(os.environ.get("SECURE_ES_PORT", str(int(os.environ.get("FAULT_ES_PORT", "9220")) + 10)))
SECURE_ES_URL = f"http://127.0.0.1:{SECURE_ES_PORT}"
SUPERUSER = ("elastic", "elastic-ingest-test-superuser")  # a throwaway local test node
_HOME = os.environ.get("ES_HOME_DIR") or str(REPO / ".es")
_CONFIG = os.path.join(_HOME, f"node-{SECURE_ES_PORT}", "config")


def user_client(username: str, password: str):
    from transforms.es_client import ElasticsearchConnection

    return ElasticsearchConnection(hosts=(SECURE_ES_URL,), username=username, password=password,
                                   request_timeout=30).client()


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data):  # noqa: ANN001 - yaml's signature
        return True


def _privileges(role: dict) -> tuple[frozenset, frozenset]:
    indices = frozenset((frozenset(entry["names"]), frozenset(entry["privileges"])) for entry in role.get("indices", []))
    return frozenset(role.get("cluster", [])), indices


def start_secure_node():
    """A superuser client for the secured node, started if needed (skip locally / fail in CI)."""
    env = {**os.environ, "ES_PORT": str(SECURE_ES_PORT), "ES_HEAP": os.environ.get("FAULT_ES_HEAP", "512m"),
           "ES_ELASTIC_PASSWORD": SUPERUSER[1], "ES_SETTINGS": "resource.reload.interval.high=1s"}
    result = subprocess.run([str(REPO / "scripts" / "elasticsearch"), "start"], capture_output=True, text=True,
                            timeout=300, env=env)
    if result.returncode != 0:
        skip_or_fail(f"cannot start a secured Elasticsearch on port {SECURE_ES_PORT}: {result.stderr[-2000:]}")
    client = user_client(*SUPERUSER)
    client.cluster.health(wait_for_status="yellow", timeout="60s")
    return client


def set_file_users(users: dict[str, tuple[str, str]], roles: dict[str, dict], *, timeout: float = 30) -> None:
    """Make the file realm hold exactly ``users`` (name -> (password, role)) and ``roles``.

    Passwords are stored in clear (the file realm accepts that; a test node only).
    """
    with open(os.path.join(_CONFIG, "roles.yml"), "w", encoding="utf-8") as out:
        # Block YAML without anchors: Elasticsearch reads each top-level role on its own.
        yaml.dump(json.loads(json.dumps(roles)), out, Dumper=_NoAliases, default_flow_style=False)
    with open(os.path.join(_CONFIG, "users"), "w", encoding="utf-8") as out:
        out.writelines(f"{name}:{password}\n" for name, (password, _) in users.items())
    members: dict[str, list[str]] = {}
    for name, (_, role) in users.items():
        members.setdefault(role, []).append(name)
    with open(os.path.join(_CONFIG, "users_roles"), "w", encoding="utf-8") as out:
        out.writelines(f"{role}:{','.join(names)}\n" for role, names in members.items())
    deadline = time.monotonic() + timeout
    for name, (password, role) in users.items():
        client = user_client(name, password)
        while True:
            try:
                # The user is known, and its role's privileges are those just written.
                if _privileges(client.security.get_user_privileges()) == _privileges(roles[role]):
                    break
            except Exception:  # noqa: BLE001 - not reloaded yet (401)
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the secured node did not load file user {name} within {timeout}s")
            time.sleep(0.2)
        client.close()
