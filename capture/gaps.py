"""Gaps: time windows in which notifications may have been missed, and their catch-up scans.

All times are the watched Redis server's clock, in microseconds since the
Unix epoch. A gap ``[start_us, end_us]`` means: notifications for writes
after ``start_us`` may be lost, and every write after ``end_us`` is delivered
again. A catch-up scan closes it by publishing every watched key whose seen
time is not older than ``start_us`` minus the clock-skew margin, because Echo
writers store "now" from their own clocks.

Overlapping gaps are merged into one whose scan starts over, because keys
the old scan had already passed may have changed inside the new window.
Disjoint gaps keep separate scans, so a scan interrupted by a restart resumes
at its cursor while the restart's own gap gets a scan of its own.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import asdict, dataclass, field


@dataclass
class Gap:
    start_us: int
    end_us: int
    reasons: list[str]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    cursor: int = 0
    scan_started: bool = False
    scanned_keys: int = 0
    published_keys: int = 0
    run_id: str = ""
    closed_at_us: int | None = None
    needs_rescan: bool = False

    def overlaps(self, start_us: int, end_us: int) -> bool:
        return start_us <= self.end_us and self.start_us <= end_us

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict) -> "Gap":
        return cls(**document)


class GapLog:
    """Open and recently closed gaps of one source; thread-safe."""

    def __init__(self, open_gaps: list[Gap] | None = None, recent: list[Gap] | None = None,
                 keep_recent: int = 20) -> None:
        self._lock = threading.Lock()
        self._open: list[Gap] = list(open_gaps or [])
        self._recent: list[Gap] = list(recent or [])
        self._keep_recent = keep_recent
        self.changed = threading.Event()

    def record(self, start_us: int, end_us: int, reason: str, run_id: str) -> Gap:
        """Add a gap, merging it with every open gap it overlaps; return the resulting gap."""
        end_us = max(start_us, end_us)
        with self._lock:
            merged = Gap(start_us, end_us, [reason], run_id=run_id)
            keep = []
            for gap in self._open:
                if gap.overlaps(start_us, end_us):
                    merged.start_us = min(merged.start_us, gap.start_us)
                    merged.end_us = max(merged.end_us, gap.end_us)
                    merged.reasons = sorted(set(merged.reasons) | set(gap.reasons))
                else:
                    keep.append(gap)
            # A gap whose scan had not started yet loses nothing by being merged: the
            # merged scan starts at cursor 0 either way.
            keep.append(merged)
            self._open = sorted(keep, key=lambda gap: gap.start_us)
        self.changed.set()
        return merged

    def next_to_scan(self) -> Gap | None:
        with self._lock:
            return self._open[0] if self._open else None

    def invalidate_cursors(self, run_id: str) -> None:
        """Restart every scan that belongs to another server run: SCAN cursors do not survive a restart."""
        with self._lock:
            for gap in self._open:
                if gap.run_id != run_id:
                    gap.cursor = 0
                    gap.scan_started = False
                    gap.run_id = run_id

    def close(self, gap: Gap, closed_at_us: int) -> bool:
        """Close a gap whose scan finished; return False when it was merged away meanwhile."""
        with self._lock:
            if gap not in self._open:
                return False
            self._open.remove(gap)
            gap.closed_at_us = closed_at_us
            self._recent.append(gap)
            del self._recent[:-self._keep_recent]
        self.changed.set()
        return True

    def open_gaps(self) -> list[Gap]:
        with self._lock:
            return list(self._open)

    def recent_gaps(self) -> list[Gap]:
        with self._lock:
            return list(self._recent)

    def oldest_open_start_us(self) -> int | None:
        with self._lock:
            return min((gap.start_us for gap in self._open), default=None)

    def contains(self, gap: Gap) -> bool:
        with self._lock:
            return gap in self._open
