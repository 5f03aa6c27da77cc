"""Azure Blob Storage (and Azurite): one document per blob."""

from sources.azure_blob.source import AzureBlobStorageDataSource

__all__ = ["AzureBlobStorageDataSource"]
