"""The network drive (SMB) source; see :mod:`sources.network_drive.source`."""

from sources.network_drive.source import NetworkDriveDataSource, NetworkDriveSettings

__all__ = ["NetworkDriveDataSource", "NetworkDriveSettings"]
