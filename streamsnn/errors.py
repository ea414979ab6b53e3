"""The project's own exception types.

Every error a user can provoke with bad input derives from StreamsnnError, so
callers (and the CLI) can catch one type and print its message, which names
the file and, where it applies, the byte offset, event index or field.
"""
from __future__ import annotations

import os


class StreamsnnError(Exception):
    """Base of every error streamsnn raises on purpose."""


class EventFormatError(StreamsnnError, ValueError):
    """A file cannot be read as events: unknown format, corrupt or truncated content."""

    def __init__(self, path: str | os.PathLike | None, message: str, offset: int | None = None):
        self.path = None if path is None else os.fspath(path)
        self.offset = offset
        where = f"{self.path}" if self.path is not None else "<events>"
        if offset is not None:
            where += f" (byte offset {offset})"
        super().__init__(f"{where}: {message}")


class EventValidationError(StreamsnnError, ValueError):
    """Events violate the contract: unsorted t, coordinates outside the sensor, p not in {0, 1}."""

    def __init__(self, message: str, index: int | None = None, field: str | None = None,
                 source: str | None = None):
        self.index = index
        self.field = field
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + message)


class SensorSizeError(StreamsnnError, ValueError):
    """The sensor geometry is unknown or inconsistent with the events."""


class CheckpointError(StreamsnnError, ValueError):
    """A checkpoint file is missing, corrupt or not a streamsnn checkpoint."""


class ConfigError(StreamsnnError, ValueError):
    """A pipeline definition or command-line setting is invalid."""


class SourceError(StreamsnnError, RuntimeError):
    """A live or replayed event source failed (camera missing, stream dropped, file corrupt mid-stream)."""


class DatasetError(StreamsnnError, RuntimeError):
    """A dataset cannot be found, extracted or downloaded (names the folder or archive and why)."""
