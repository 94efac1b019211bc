"""Capped exponential backoff with full jitter, shared by Redis, Kafka and Kask retries."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of base * 2**attempt, capped, with full jitter; reset after a success."""

    base_s: float = 0.2
    cap_s: float = 30.0
    attempt: int = 0
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay_s(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        # Full jitter spreads retries of many workers so they do not hit a recovering service together.
        return self._random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
