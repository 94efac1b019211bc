"""Output helpers of the operator tools: aligned tables, ages, times and the shared --timeout option."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from operations.kafkaops import DEFAULT_TIMEOUT_S


def add_timeout_argument(parser: argparse.ArgumentParser, default_s: float = DEFAULT_TIMEOUT_S) -> None:
    parser.add_argument("--timeout", type=positive_float, default=default_s, metavar="SECONDS", dest="timeout_s",
                        help=f"timeout of each request to Kafka, Redis or Kask, in seconds (default: {default_s:g}); "
                             "an unreachable service fails the command with exit status 3 after about this long")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render rows as left-aligned columns separated by two spaces."""
    cells = [[str(header) for header in headers]] + [["" if cell is None else str(cell) for cell in row]
                                                     for row in rows]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def format_seconds(seconds: float | None) -> str:
    """Render a duration for people: 0.0s, 42.1s, 12m05s, 3h04m, 2d03h."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_time_ms(epoch_ms: int | float | None) -> str:
    """Render epoch milliseconds as an ISO 8601 UTC time with seconds."""
    if epoch_ms is None:
        return "-"
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def print_json(document: Any) -> None:
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (such as `head`) closed the pipe; stop writing quietly, as command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
