"""Per-partition offset tracking: which Kafka offset may be stored after out-of-order completion.

Records of one partition are applied concurrently (different keys do not wait
for each other), so they finish in any order. Kafka's committed offset means
"everything before this offset is done", so the tracker stores N+1 only once
every consumed offset up to and including N has finished. A record that never
finishes (retrying, or stopping its partition) keeps the stored offset at its
own offset, however many later records finish.
"""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    """Consumed and finished offsets of one partition, in consumption order."""

    def __init__(self) -> None:
        # (offset, timestamp in seconds) of consumed records that are not part of the finished prefix yet.
        self._pending: deque[tuple[int, float]] = deque()
        self._finished: set[int] = set()
        self._last_consumed: int | None = None
        self._store_offset: int | None = None

    @property
    def store_offset(self) -> int | None:
        """The offset to store (next offset to consume), or None before any record finished."""
        return self._store_offset

    @property
    def last_consumed(self) -> int | None:
        return self._last_consumed

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def position(self) -> int | None:
        """Return the lowest offset not yet finished: the first pending one, else the one after the last consumed."""
        if self._pending:
            return self._pending[0][0]
        if self._last_consumed is not None:
            return self._last_consumed + 1
        return None

    def oldest_pending_timestamp_s(self) -> float | None:
        """Return the timestamp of the oldest consumed record that is not finished, or None when caught up."""
        # The head of the queue is never finished: finish() pops every finished offset at the head.
        return self._pending[0][1] if self._pending else None

    def add(self, offset: int, timestamp_s: float) -> bool:
        """Record a consumed offset; return False for an offset at or below one already consumed.

        Offsets of one partition arrive in increasing order, with gaps where
        the log contains transaction markers or compacted records.
        """
        if self._last_consumed is not None and offset <= self._last_consumed:
            return False
        self._last_consumed = offset
        self._pending.append((offset, timestamp_s))
        return True

    def finish(self, offset: int) -> int | None:
        """Mark a consumed offset finished; return the new offset to store when the finished prefix grew."""
        if not self._pending or offset < self._pending[0][0]:
            return None
        self._finished.add(offset)
        advanced = False
        while self._pending and self._pending[0][0] in self._finished:
            done, _ = self._pending.popleft()
            self._finished.discard(done)
            self._store_offset = done + 1
            advanced = True
        return self._store_offset if advanced else None
