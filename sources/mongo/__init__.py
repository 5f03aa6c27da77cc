"""MongoDB source: one collection, read in parallel ``_id`` ranges.

Example ``config.yml`` entry::

    sources:
      mongodb: sources.mongo:MongoDataSource
"""

from sources.mongo.source import MongoDataSource

__all__ = ["MongoDataSource"]
