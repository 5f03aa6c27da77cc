"""Google Cloud Storage (and its emulators): one document per object."""

from sources.gcs.source import GoogleCloudStorageDataSource

__all__ = ["GoogleCloudStorageDataSource"]
