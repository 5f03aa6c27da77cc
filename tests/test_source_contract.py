"""The source contract: every source must pass :func:`sources.testing.check_source_contract`.

Built-in sources whose servers are not needed (memory, directory) are checked here;
sources that need a server are checked by their own test modules.
"""

from __future__ import annotations

import asyncio
import functools

import pytest

from sources.base import BaseDataSource, DataSourceConfiguration, Partition
from sources.directory import DirectoryDataSource
from sources.driver import build_source
from sources.testing import MemorySource, check_source_contract, make_docs, read_partitions


class OriginalStyleSource(BaseDataSource):
    """As written for the original connector framework: async everything, one partition."""

    name = "Original"
    service_type = "original"

    @classmethod
    def get_default_configuration(cls):
        return {"count": {"label": "Count", "type": "int", "value": 3}}

    async def get_content(self, doc, timestamp=None, doit=False):
        if doit:
            await asyncio.sleep(0)
            return {"_id": doc["_id"], "body": "text"}

    async def get_docs(self, filtering=None):
        for i in range(self.configuration["count"]):
            doc = {"_id": i}
            yield doc, functools.partial(self.get_content, doc)

    closed = 0

    async def close(self):
        type(self).closed += 1


class DuckSource:
    """Not a subclass at all: still gets a DataSourceConfiguration with its schema applied."""

    @classmethod
    def get_default_configuration(cls):
        return {"greeting": {"value": "hello"}, "name": {"value": ""}}

    def __init__(self, configuration):
        self.configuration = configuration

    def get_docs(self):
        yield {"_id": "1", "text": f"{self.configuration['greeting']} {self.configuration['name']}"}


def test_contract_when_memory_source_partitioned_then_passes():
    docs = check_source_contract(MemorySource, {"docs": make_docs(10), "partitions": 3, "lazy": True})
    assert sorted(d["_id"] for d in docs) == sorted(d["_id"] for d in make_docs(10))
    assert all(d["body"] == f"body of {d['_id']}" for d in docs)


def test_contract_when_directory_source_then_passes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.md").write_text("b")
    docs = check_source_contract(DirectoryDataSource, {"directory": {"value": str(tmp_path)}},
                                 operator_settings={"allowed_roots": [str(tmp_path)]})
    assert sorted(d["body"] for d in docs) == ["a", "b"]


def test_contract_when_original_framework_style_then_passes_and_close_called():
    OriginalStyleSource.closed = 0
    docs = check_source_contract(OriginalStyleSource, {"count": {"value": 2}})
    assert docs == [{"_id": 0, "body": "text"}, {"_id": 1, "body": "text"}]
    assert OriginalStyleSource.closed == 3  # one per instance: partitions read, whole read, never read


def test_contract_when_source_is_duck_typed_then_configuration_values_read_by_name():
    source = build_source(DuckSource, {"name": {"value": "world"}})
    assert read_partitions(source) == [{"_id": "1", "text": "hello world"}]


def test_contract_when_ids_repeat_across_partitions_then_fails():
    class Overlapping(MemorySource):
        def get_partitions(self):
            return [Partition("a", {"index": 0, "of": 1}), Partition("b", {"index": 0, "of": 1})]

    with pytest.raises(AssertionError, match="ids repeat"):
        check_source_contract(Overlapping, {"docs": make_docs(2)})


def test_configuration_when_values_missing_then_defaults_and_secrets_hidden():
    schema = {"host": {"default_value": "localhost"}, "password": {"sensitive": True}}
    config = DataSourceConfiguration({"password": "s3cret", "port": 9}, schema)
    assert config["host"] == "localhost" and config["port"] == 9 and config["password"] == "s3cret"
    assert config.get_field("host").value == "localhost"
    assert "s3cret" not in repr(config)
    assert DataSourceConfiguration({"host": {"value": "db"}}, schema)["host"] == "db"
