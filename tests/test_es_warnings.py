"""Elasticsearch's deprecation warnings are logged, each kind once, and other warnings left alone.

Run in a fresh interpreter: pytest installs its own warning capture around every test.
"""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO

_SCRIPT = """
import logging, warnings
from elasticsearch.exceptions import ElasticsearchWarning
from launcher.es_warnings import log_elasticsearch_warnings_once
logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
log_elasticsearch_warnings_once()
log_elasticsearch_warnings_once()
for index in (".elastic-connectors-v1", ".elastic-connectors-sync-jobs-v1", ".other-v2"):
    warnings.warn(f"index name [{index}] starts with a dot '.', in the next major version ...", ElasticsearchWarning)
warnings.warn("this request accesses system indices: [.elastic-connectors-v1], but ...", ElasticsearchWarning)
warnings.warn("not ours", UserWarning)
"""


def test_log_elasticsearch_warnings_once_when_warned_repeatedly_then_each_kind_logged_once():
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=60)

    lines = result.stderr.splitlines()
    ours = [line for line in lines if line.startswith("WARNING launcher.elasticsearch: Elasticsearch says:")]
    assert len(ours) == 2, result.stderr
    assert "index name [.elastic-connectors-v1] starts with a dot" in ours[0]
    assert "accesses system indices" in ours[1]
    assert any("UserWarning: not ours" in line for line in lines), result.stderr
