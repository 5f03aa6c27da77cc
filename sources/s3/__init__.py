"""Amazon S3 and S3-compatible servers (MinIO, moto, Ceph...): one document per object."""

from sources.s3.source import S3DataSource

__all__ = ["S3DataSource"]
