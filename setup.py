"""Shim for ``--setup_file``: Dataflow workers install the project from this file.

Everything (name, version, dependencies, packages) is declared in pyproject.toml;
setuptools reads it from there. See docs/runners.md.
"""

from setuptools import setup

setup()
