"""MySQL and MariaDB source: tables of one database, read in parallel key ranges.

Example ``config.yml`` entry::

    sources:
      mysql: sources.mysql:MySqlDataSource
"""

from sources.mysql.source import MySqlDataSource

__all__ = ["MySqlDataSource"]
