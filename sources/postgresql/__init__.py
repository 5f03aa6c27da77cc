"""PostgreSQL source: tables of one schema, read in parallel key ranges.

Example ``config.yml`` entry::

    sources:
      postgresql: sources.postgresql:PostgreSQLDataSource
"""

from sources.postgresql.source import PostgreSQLDataSource

__all__ = ["PostgreSQLDataSource"]
