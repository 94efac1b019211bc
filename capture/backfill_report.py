"""``--report``: how far back the seen times go, per wiki and type, without publishing anything.

Ages are counted relative to a reference time (now, or ``--as-of``) in five
buckets: the last 30 days, 90 days, one year, two years, and older. A bucket
holds the ages up to its bound and above the previous one. Placeholders
(19700101000001) and bad values fall in no bucket. With a cutoff, the report
also counts the keys the cutoff would skip. It ends with what Kask will do
to the copied keys' lifetimes.

This module also renders the snapshot's summary as text.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from capture.backfill_plan import Plan
from capture.backfill_progress import PingMonitor, Progress
from capture.backfill_scan import Chunk, Finished, Restarted, ScanFeed, Started, drive_feed, feed_settings
from capture.backfill_snapshot import sample_entry
from capture.sources import Source
from echoseen import echo_value, events
from echoseen.config import Config

log = logging.getLogger(__name__)

AGE_BUCKETS = (("le_30d", 30), ("le_90d", 90), ("le_1y", 365), ("le_2y", 730))
AGE_BUCKET_OLDER = "older"
BUCKET_NAMES = tuple(name for name, _ in AGE_BUCKETS) + (AGE_BUCKET_OLDER,)
BUCKET_TITLES = {"le_30d": "<=30d", "le_90d": "<=90d", "le_1y": "<=1y", "le_2y": "<=2y", "older": "older"}
OTHER = "(other)"
SAMPLE_KEYS_PER_REASON = 5

KASK_LIFETIMES = (
    "Lifetimes in Kask: Kask has one TTL for the whole service (its default_ttl; Wikimedia's echo store uses one "
    "year) and no per-key TTL. Every copied key lives for default_ttl from the moment the replicator writes it: "
    "keys without a TTL in Redis gain one, and the remaining Redis TTLs are not carried over.")

# Column positions of a row's counters.
_KEYS, _NO_TTL, _PLACEHOLDERS, _BAD, _BEFORE_CUTOFF, _COPY, _COPY_NO_TTL = range(7)
_BUCKET_BASE = 7
_ROW_SIZE = _BUCKET_BASE + len(BUCKET_NAMES)


def wiki_and_type(key: bytes) -> tuple[str, str]:
    """Split ``<wiki>:echo:seen:<type>:time:<user id>``; keys of another shape count as (other).

    MediaWiki escapes ``:`` inside key components, so an Echo key has exactly
    six components and a decimal user id. Keys that match the configured
    patterns without having this shape land in the (other) row.
    """
    parts = key.split(b":")
    if (len(parts) == 6 and parts[0] and parts[1] == b"echo" and parts[2] == b"seen" and parts[4] == b"time"
            and parts[5].isdigit()):
        return events.key_text(parts[0]), events.key_text(parts[3])
    return OTHER, OTHER


def bucket_bounds(as_of: datetime) -> list[str]:
    """TS_MW of the oldest seen time of each bucket but "older", newest first.

    A seen time at or after bounds[i] is at most that bucket's days old, so
    comparing TS_MW text replaces date arithmetic per key.
    """
    reference = as_of.astimezone(timezone.utc).replace(microsecond=0)
    return [echo_value.ts_mw_from_datetime(reference - timedelta(days=days)) for _, days in AGE_BUCKETS]


class AgeReport:
    """Counters per (wiki, type) of keys, ages, TTLs, placeholders, bad values and cutoff."""

    def __init__(self, as_of: datetime, cutoff_ts_mw: str, max_value_bytes: int) -> None:
        self.as_of = as_of
        self.cutoff = cutoff_ts_mw
        self.max_value_bytes = max_value_bytes
        self.bounds = bucket_bounds(as_of)
        self.rows: dict[tuple[str, str], list[int]] = {}
        self.bad_values: dict[str, int] = {}
        self.samples: dict[str, list[dict[str, Any]]] = {}
        self.gone = 0
        self.scanned = 0

    def add(self, chunk: Chunk, server: str) -> None:
        self.scanned += chunk.scanned
        bounds = self.bounds
        placeholder = echo_value.PLACEHOLDER
        for state in chunk.states:
            if not state.exists:
                self.gone += 1
                continue
            place = wiki_and_type(state.key)
            row = self.rows.get(place)
            if row is None:
                row = self.rows[place] = [0] * _ROW_SIZE
            row[_KEYS] += 1
            no_ttl = state.expire_at_ms is None
            if no_ttl:
                row[_NO_TTL] += 1
            decoded = state.decoded(self.max_value_bytes)
            if decoded.error is not None:
                row[_BAD] += 1
                self._bad_value(decoded.error.value, state, server)
                continue
            seen_time = decoded.seen_time
            if seen_time == placeholder:
                row[_PLACEHOLDERS] += 1
                continue
            for index, bound in enumerate(bounds):
                if seen_time >= bound:
                    row[_BUCKET_BASE + index] += 1
                    break
            else:
                row[_BUCKET_BASE + len(bounds)] += 1
            if seen_time < self.cutoff:
                row[_BEFORE_CUTOFF] += 1
            else:
                row[_COPY] += 1
                if no_ttl:
                    row[_COPY_NO_TTL] += 1

    def _bad_value(self, reason: str, state: Any, server: str) -> None:
        self.bad_values[reason] = self.bad_values.get(reason, 0) + 1
        items = self.samples.setdefault(reason, [])
        if len(items) < SAMPLE_KEYS_PER_REASON:
            items.append(sample_entry(state, server))

    @staticmethod
    def _row_json(wiki: str, seen_type: str, row: list[int]) -> dict[str, Any]:
        return {
            "wiki": wiki,
            "type": seen_type,
            "keys": row[_KEYS],
            "age_buckets": {name: row[_BUCKET_BASE + index] for index, name in enumerate(BUCKET_NAMES)},
            "no_ttl": row[_NO_TTL],
            "placeholders": row[_PLACEHOLDERS],
            "bad_values": row[_BAD],
            "before_cutoff": row[_BEFORE_CUTOFF],
            "would_copy": row[_COPY],
            "would_copy_without_ttl": row[_COPY_NO_TTL],
        }

    def to_json(self) -> dict[str, Any]:
        total = [0] * _ROW_SIZE
        rows = []
        for (wiki, seen_type), row in sorted(self.rows.items()):
            rows.append(self._row_json(wiki, seen_type, row))
            total = [a + b for a, b in zip(total, row)]
        totals = self._row_json("(all)", "(all)", total)
        del totals["wiki"], totals["type"]
        copy, copy_no_ttl = total[_COPY], total[_COPY_NO_TTL]
        return {
            "as_of": self.as_of.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cutoff": (echo_value.datetime_from_ts_mw(self.cutoff).strftime("%Y-%m-%dT%H:%M:%SZ")
                       if self.cutoff else None),
            "rows": rows,
            "totals": totals,
            "scanned": self.scanned,
            "gone": self.gone,
            "bad_values": dict(sorted(self.bad_values.items())),
            "bad_value_samples": self.samples,
            "kask_lifetimes": {
                "would_copy": copy,
                "without_redis_ttl": copy_no_ttl,
                "with_redis_ttl": copy - copy_no_ttl,
                "explanation": KASK_LIFETIMES,
            },
        }


class ReportJob:
    """Scan and read every selected key of every source and count them; publishes nothing."""

    def __init__(self, config: Config, plan: Plan, sources: list[Source], as_of: datetime,
                 stop: threading.Event, progress: Progress) -> None:
        self.config = config
        self.plan = plan
        self.sources = sources
        self.stop = stop
        self.progress = progress
        self.report = AgeReport(as_of, plan.cutoff_ts_mw, config.redis.max_value_bytes)
        self.ping = PingMonitor(config, sources, config.backfill.ping_sample_interval_s)
        self._settings = feed_settings(config, plan.match, plan.filters)
        self._fraction = 0.0
        self._read = 0
        self._scanned = 0

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        complete = True
        servers = []
        self.ping.start()
        try:
            for source in self.sources:
                self._fraction, self._read, self._scanned = 0.0, 0, 0
                feed = ScanFeed(self.config, source, self._settings, 0, "")
                self.ping.scan_started(source.name)
                try:
                    finished = drive_feed(feed, lambda message: self._handle(source, message), self._tick,
                                          self.stop)
                finally:
                    self.ping.scan_stopped(source.name)
                    self.progress.end(self._fraction, self._scanned, self._read)
                servers.append({"server": source.name, "finished": finished,
                                "scanned_percent": round(100.0 * self._fraction, 2)})
                if not finished:
                    complete = False
                    break
        finally:
            self.progress.clear()
            self.ping.stop()
        for server in servers:
            server["ping"] = self.ping.impact(server["server"])
        return {
            "mode": "report",
            "status": "complete" if complete else "interrupted",
            "selection": self.plan.to_json(),
            "duration_s": round(time.monotonic() - started, 3),
            "servers": servers,
        } | self.report.to_json()

    def _handle(self, source: Source, message: object) -> None:
        if isinstance(message, Chunk):
            self.report.add(message, source.name)
            self._fraction = message.fraction
            self._scanned += message.scanned
            self._read += len(message.states)
        elif isinstance(message, Started):
            log.info("reading Redis %s (version %s, run_id %s, DBSIZE %d)", source.name, message.version,
                     message.run_id, message.dbsize)
            self.progress.begin(source.name, message.dbsize, 0.0)
        elif isinstance(message, Restarted):
            # Counts from before the restart stay and the rescan counts keys again, so the warning tells the operator.
            log.warning("Redis %s restarted during the report; its keys are counted again from the start, so the "
                        "report may count some keys twice", source.name)
            self.progress.restart(message.dbsize)
        elif isinstance(message, Finished):
            self._fraction = 1.0

    def _tick(self) -> None:
        self.progress.update(self._fraction, self._scanned, self._read)


# ---------------------------------------------------------------------- text rendering


def _ping_line(server: dict[str, Any]) -> str | None:
    ping = server.get("ping")
    if not ping:
        return None
    if ping.get("error"):
        return f"  PING latency: not measured ({ping['error']})"

    def stats(part: dict[str, Any]) -> str:
        if not part["samples"]:
            return "no samples"
        return (f"p50 {part['p50_ms']:.2f} ms, p99 {part['p99_ms']:.2f} ms, max {part['max_ms']:.2f} ms "
                f"({part['samples']} samples)")

    line = f"  PING latency before: {stats(ping['before'])}; during: {stats(ping['during'])}"
    if ping.get("failed_pings"):
        line += f"; {ping['failed_pings']} PINGs failed"
    return line


def _samples_lines(samples: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = []
    for reason, items in sorted(samples.items()):
        rendered = ", ".join(f"{item['key']} ({item['type']}, {item['size']} "
                             f"{item['size_unit'].rstrip('s') if item['size'] == 1 else item['size_unit']})"
                             for item in items)
        lines.append(f"  sample keys, {reason}: {rendered}")
    return lines


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items())) or "none"


def render_report(report: dict[str, Any]) -> str:
    cutoff = report["cutoff"]
    lines = [f"Echo seen-time keys by wiki and type, ages relative to {report['as_of']}"
             + (f", cutoff {cutoff}" if cutoff else "")
             + ("" if report["status"] == "complete" else " (INCOMPLETE: the scan was interrupted)")]
    headers = ["wiki", "type", "keys", *[BUCKET_TITLES[name] for name in BUCKET_NAMES], "no TTL", "placeholder",
               "bad"]
    if cutoff:
        headers += ["before cutoff", "would copy"]

    table = []
    for row in report["rows"] + [dict(report["totals"], wiki="total", type="")]:
        cells = [row["wiki"], row["type"], row["keys"], *[row["age_buckets"][name] for name in BUCKET_NAMES],
                 row["no_ttl"], row["placeholders"], row["bad_values"]]
        if cutoff:
            cells += [row["before_cutoff"], row["would_copy"]]
        table.append([str(cell) for cell in cells])

    widths = [max(len(headers[i]), *(len(cells[i]) for cells in table)) for i in range(len(headers))]
    lines.append("  ".join(header.ljust(width) if i < 2 else header.rjust(width)
                           for i, (header, width) in enumerate(zip(headers, widths))))
    for cells in table:
        lines.append("  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(cells, widths))))

    lines.append("")
    lines.append(f"Bad values (never copied): {_counts_text(report['bad_values'])}")
    lines.extend(_samples_lines(report["bad_value_samples"]))
    if report["gone"]:
        lines.append(f"Keys gone between SCAN and the read (expired or deleted): {report['gone']}")
    if cutoff:
        lines.append(f"The cutoff would skip {report['totals']['before_cutoff']} keys seen before {cutoff}.")

    lifetimes = report["kask_lifetimes"]
    lines.append("")
    lines.append(lifetimes["explanation"])
    lines.append(f"  keys that would be copied: {lifetimes['would_copy']}; without a TTL in Redis (they gain "
                 f"Kask's TTL): {lifetimes['without_redis_ttl']}; with a TTL in Redis (replaced by Kask's TTL from "
                 f"the write): {lifetimes['with_redis_ttl']}")

    for server in report["servers"]:
        ping = _ping_line(server)
        lines.append(f"{server['server']}: {server['scanned_percent']:.1f} % of the keyspace scanned")
        if ping:
            lines.append(ping)
    return "\n".join(lines)


def render_summary(summary: dict[str, Any]) -> str:
    """Render the snapshot summary for people; --json prints the same data as JSON."""
    totals = summary["totals"]
    this_run = summary["this_run"]
    lines = [
        f"Backfill {summary['status']} in {summary['duration_s']:.1f} s into topic {summary['topic']}"
        + (" (resumed from the checkpoint)" if summary["resumed"] else ""),
        f"  this run: {this_run['scanned']} keys scanned, {this_run['matched']} matched, {this_run['published']} "
        f"published in {this_run['copy_s']:.1f} s from the first read to the last acknowledgement "
        f"({this_run['scanned_per_s']} scanned/s, {this_run['published_per_s']} published/s)",
        f"  job totals (acknowledged positions, all runs): {totals['scanned']} scanned, {totals['matched']} "
        f"matched, {totals['published']} published",
        f"  skipped: {_counts_text(totals['skipped'])}",
        f"  bad values (not published): {_counts_text(totals['bad_values'])}",
    ]
    lines.extend(_samples_lines(summary["bad_value_samples"]))
    for server in summary["servers"]:
        state = "complete" if server["finished"] else f"{server['scanned_percent']:.1f} % scanned"
        lines.append(f"  {server['server']}: {state}, run_id {server['run_id'] or '?'}"
                     + (f", scan restarted {server['restarts']} time(s) after a Redis restart or failover"
                        if server["restarts"] else ""))
        ping = _ping_line(server)
        if ping:
            lines.append("  " + ping)
    if summary.get("error"):
        lines.append(f"  error: {summary['error']}")
    if summary.get("resume_command"):
        lines.append(f"  resume with: {summary['resume_command']}")
    return "\n".join(lines)
