"""Redis source: every key of one or more Redis databases, one document per key.

Example ``config.yml`` entry::

    sources:
      redis: sources.redis:RedisDataSource
"""

from sources.redis.source import RedisDataSource

__all__ = ["RedisDataSource"]
