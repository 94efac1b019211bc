"""The backfill checkpoint: the scan position of each server, from which ``--resume`` continues.

The checkpoint is one JSON file. It records, per server, the SCAN cursor up to
which every matched key's event was acknowledged by Kafka, the server's
run_id when that cursor was returned, and the counts of the work the cursor
covers. It also records the settings that decide which keys are copied
(selection, key patterns, cutoff, topic, servers), because resuming a scan
with other settings would silently leave keys out.

Writes are atomic: a temporary file in the same directory is written and
fsynced, then renamed over the checkpoint, so a crash leaves either the old
or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echoseen.errors import ConfigError

FORMAT_VERSION = 1


@dataclass
class ServerCheckpoint:
    """The acknowledged scan position of one server."""

    run_id: str = ""
    cursor: int = 0
    finished: bool = False
    restarts: int = 0
    counts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "cursor": self.cursor, "finished": self.finished,
                "restarts": self.restarts, "counts": self.counts}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "ServerCheckpoint":
        return cls(run_id=str(document.get("run_id", "")), cursor=int(document.get("cursor", 0)),
                   finished=bool(document.get("finished", False)), restarts=int(document.get("restarts", 0)),
                   counts=dict(document.get("counts", {})))


@dataclass
class Checkpoint:
    """The whole checkpoint file: the job's settings and one entry per server."""

    settings: dict[str, Any]
    servers: dict[str, ServerCheckpoint] = field(default_factory=dict)
    started_at: str = ""
    updated_at: str = ""

    @property
    def finished(self) -> bool:
        return bool(self.servers) and all(server.finished for server in self.servers.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "settings": self.settings,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "servers": {name: server.to_json() for name, server in sorted(self.servers.items())},
        }


def utc_now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load(path: Path) -> Checkpoint | None:
    """Read the checkpoint at ``path``; None when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the backfill checkpoint {str(path)!r} ([backfill] checkpoint_file): "
                          f"{exc.strerror}; fix its permissions or pass --restart to start over") from exc
    try:
        document = json.loads(text)
        if document.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {document.get('format_version')!r}, expected {FORMAT_VERSION}")
        return Checkpoint(
            settings=dict(document["settings"]),
            servers={name: ServerCheckpoint.from_json(entry) for name, entry in document["servers"].items()},
            started_at=str(document.get("started_at", "")),
            updated_at=str(document.get("updated_at", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"the backfill checkpoint {str(path)!r} ([backfill] checkpoint_file) is not a valid "
                          f"checkpoint: {exc}; pass --restart to discard it and start over") from exc


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically: temporary file, fsync, rename, fsync of the directory."""
    checkpoint.updated_at = utc_now_text()
    payload = json.dumps(checkpoint.to_json(), indent=2, sort_keys=True) + "\n"
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    # The rename is durable only once the directory entry is on disk.
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def settings_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Describe each setting whose value differs between a checkpoint and this run."""
    differences = []
    for name in sorted(set(saved) | set(current)):
        if saved.get(name) != current.get(name):
            differences.append(f"{name}: checkpoint {json.dumps(saved.get(name))}, "
                               f"this run {json.dumps(current.get(name))}")
    return differences
