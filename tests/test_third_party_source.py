"""A third-party source: its own package, installed with pip, declared by FQN, synced end to end."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.helpers import cli, index_docs, run_sync, write_config

pytestmark = pytest.mark.integration

PYPROJECT = textwrap.dedent("""\
    [build-system]
    requires = ["setuptools>=61"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "mycompany-source-test"
    version = "1.0.0"
    dependencies = []

    [tool.setuptools]
    packages = ["mycompany_source"]
""")

SOURCE = textwrap.dedent('''\
    """Notes: each line of a text file is a document."""
    import os

    from sources.base import BaseDataSource, Partition


    class NotesSource(BaseDataSource):
        name = "Notes (third party)"
        service_type = "notes"

        @classmethod
        def get_default_configuration(cls):
            return {"path": {"label": "File", "type": "str", "order": 1}}

        async def ping(self):
            if not os.path.isfile(self.configuration["path"]):
                raise FileNotFoundError(f"no file at {self.configuration['path']}")

        def get_partitions(self):
            return [Partition("even", {"parity": 0}), Partition("odd", {"parity": 1})]

        def get_docs(self, filtering=None, partition=None):
            with open(self.configuration["path"], encoding="utf-8") as lines:
                for number, line in enumerate(lines):
                    if partition is None or number % 2 == partition.params["parity"]:
                        yield {"_id": f"line-{number}", "text": line.rstrip("\\n"), "number": number}, None
''')


@pytest.fixture(scope="module")
def installed_package(tmp_path_factory):
    root = tmp_path_factory.mktemp("thirdparty")
    (root / "mycompany_source").mkdir()
    (root / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    (root / "mycompany_source" / "__init__.py").write_text("", encoding="utf-8")
    (root / "mycompany_source" / "notes.py").write_text(SOURCE, encoding="utf-8")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "--no-deps", str(root)], check=True,
                   capture_output=True, timeout=300)
    yield "mycompany_source.notes:NotesSource"
    subprocess.run([*pip, "uninstall", "-y", "-q", "mycompany-source-test"], check=False, capture_output=True)


def test_third_party_source_when_installed_and_declared_then_listed(installed_package, tmp_path):
    config = write_config(tmp_path / "c.yml", sources={"notes": installed_package})
    result = cli("--action", "list", config=config)
    assert result.returncode == 0, result.stderr
    assert "Notes (third party)" in result.stdout


def test_third_party_source_when_synced_then_every_line_indexed(installed_package, es, tmp_path, index_name):
    notes = tmp_path / "notes.txt"
    notes.write_text("first\nsecond\nthird\n", encoding="utf-8")
    outcome = run_sync(index=index_name, service_type="notes", fqn=installed_package,
                       configuration={"path": str(notes)})
    assert outcome["status"] == "completed", outcome
    assert outcome["indexed_document_count"] == 3
    docs = index_docs(es, index_name)
    assert {d: docs[d]["text"] for d in docs} == {"line-0": "first", "line-1": "second", "line-2": "third"}

    notes.write_text("first\nsecond\n", encoding="utf-8")
    outcome = run_sync(index=index_name, service_type="notes", fqn=installed_package,
                       configuration={"path": str(notes)})
    assert outcome["status"] == "completed" and outcome["deleted_document_count"] == 1
    assert set(index_docs(es, index_name)) == {"line-0", "line-1"}
