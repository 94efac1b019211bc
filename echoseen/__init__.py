"""Shared code of the Echo seen-time replicator: configuration, codecs, events, health and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("echoseen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
