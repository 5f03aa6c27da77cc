"""Test-only sources for the security, fault and observability tests (never in config.yml)."""
