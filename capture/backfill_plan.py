"""The plan of a backfill run: the key selection, the SCAN MATCH glob and the cutoff.

Keys must match the configured ``[redis] key_patterns``; a canary run
(``--wiki``, ``--pattern``) narrows that further, it never widens it. The
cutoff is compared with the seen time as TS_MW text, whose order is the
chronological order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Any

from capture.patterns import KeyFilter
from echoseen import echo_value
from echoseen.config import Config, mask_url
from echoseen.errors import ConfigError

# MediaWiki wiki ids are letters, digits, underscores and hyphens; "global" is the cross-wiki keyspace.
_WIKI_NAME = re.compile(r"[A-Za-z0-9_-]+")
ECHO_TYPES = ("alert", "message")


def wiki_patterns(wiki: str) -> tuple[str, ...]:
    """Return the glob patterns of one wiki's seen-time keys (both types)."""
    if not _WIKI_NAME.fullmatch(wiki):
        raise ConfigError(f"invalid --wiki {wiki!r}: a wiki id is letters, digits, underscores and hyphens "
                          "(such as enwiki), or global for cross-wiki seen times")
    return tuple(f"{wiki}:echo:seen:{seen_type}:time:*" for seen_type in ECHO_TYPES)


def parse_cutoff(text: str, where: str) -> datetime | None:
    """Parse an ISO 8601 date or datetime as an aware UTC datetime; empty text means no cutoff.

    A date means midnight UTC at its start; a datetime without a zone is UTC.
    """
    text = text.strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), time(0), tzinfo=timezone.utc)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"invalid cutoff {text!r} in {where}: expected an ISO 8601 date or datetime such as "
                          "2024-01-31 or 2024-01-31T12:00:00Z") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    if moment.year < 1970:
        raise ConfigError(f"invalid cutoff {text!r} in {where}: it lies before 1970")
    return moment


@dataclass(frozen=True)
class Plan:
    """The keys one run selects and the rules it applies to them."""

    wikis: tuple[str, ...]
    patterns: tuple[str, ...]
    cutoff: datetime | None
    key_filter: KeyFilter
    selection_filter: KeyFilter | None

    @property
    def cutoff_ts_mw(self) -> str:
        """The cutoff as TS_MW; empty without a cutoff, which every seen time sorts after."""
        return echo_value.ts_mw_from_datetime(self.cutoff) if self.cutoff else ""

    @property
    def cutoff_text(self) -> str | None:
        return self.cutoff.strftime("%Y-%m-%dT%H:%M:%SZ") if self.cutoff else None

    @property
    def match(self) -> str | None:
        """The SCAN MATCH glob: the selection's when there is one, since it is the narrower."""
        if self.selection_filter is not None:
            return self.selection_filter.scan_match()
        return self.key_filter.scan_match()

    @property
    def filters(self) -> tuple[KeyFilter, ...]:
        if self.selection_filter is None:
            return (self.key_filter,)
        return (self.selection_filter, self.key_filter)

    def describe(self) -> str:
        parts = []
        if self.wikis:
            parts.append("wikis " + ",".join(self.wikis))
        if self.patterns:
            parts.append("patterns " + ",".join(self.patterns))
        selection = "; ".join(parts) if parts else "every watched key"
        cutoff = f", seen at or after {self.cutoff_text}" if self.cutoff else ""
        return f"{selection}{cutoff} (SCAN MATCH {self.match or '(none)'})"

    def checkpoint_settings(self, config: Config) -> dict[str, Any]:
        """Return the settings a checkpoint is valid for; resuming with others is rejected."""
        return {
            "wikis": sorted(self.wikis),
            "patterns": sorted(self.patterns),
            "key_patterns": list(config.redis.key_patterns),
            "key_regex": config.redis.key_regex,
            "cutoff": self.cutoff_text,
            "topic": config.kafka.topic,
            "servers": [mask_url(url) for url in config.redis.servers],
            "cluster": config.redis.cluster,
        }

    def to_json(self) -> dict[str, Any]:
        return {"wikis": list(self.wikis), "patterns": list(self.patterns),
                "key_patterns": list(self.key_filter.patterns), "scan_match": self.match,
                "cutoff": self.cutoff_text}


def build_plan(config: Config, wikis: list[str] | None, patterns: list[str] | None,
               cutoff_option: str | None) -> Plan:
    """Build the plan from the command-line options and [backfill] cutoff."""
    wikis = list(dict.fromkeys(wikis or []))
    patterns = list(dict.fromkeys(patterns or []))
    for pattern in patterns:
        if not pattern:
            raise ConfigError("--pattern is empty; give a Redis glob such as 'enwiki:echo:seen:*'")
    selection: list[str] = []
    for wiki in wikis:
        selection.extend(wiki_patterns(wiki))
    selection.extend(patterns)

    if cutoff_option is not None and cutoff_option.strip():
        cutoff = parse_cutoff(cutoff_option, "--cutoff")
    else:
        cutoff = parse_cutoff(config.backfill.cutoff, "[backfill] cutoff")
    return Plan(
        wikis=tuple(wikis),
        patterns=tuple(patterns),
        cutoff=cutoff,
        key_filter=KeyFilter.from_config(config),
        selection_filter=KeyFilter(tuple(selection)) if selection else None,
    )
