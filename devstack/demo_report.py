"""The demo's report as text: what was copied, replicated, measured and verified, and how long each step took."""

from __future__ import annotations

from typing import Any


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _delay_line(label: str, summary: dict[str, Any]) -> str:
    if not summary.get("probes"):
        return f"  {label}: no probe finished ({summary.get('unfinished', 0)} unfinished)"
    unfinished = f", {summary['unfinished']} never visible" if summary.get("unfinished") else ""
    return (f"  {label}: {summary['probes']} probes{unfinished}; p50 {_seconds(summary['p50_s'])}, "
            f"p95 {_seconds(summary['p95_s'])}, p99 {_seconds(summary['p99_s'])}, max {_seconds(summary['max_s'])}")


def _counts(mapping: dict[str, Any] | None) -> str:
    if not mapping:
        return "none"
    return ", ".join(f"{name} {count}" for name, count in sorted(mapping.items()))


def render_report(report: dict[str, Any]) -> str:
    lines = ["", "echoseen demo report", "===================="]

    keyspace = report.get("keyspace")
    if keyspace:
        lines.append(f"keyspace:     {keyspace['echo_keys']} Echo keys of {keyspace['users']} users "
                     f"({keyspace['placeholders']} placeholders) and {keyspace['unrelated_keys']} unrelated keys, "
                     f"loaded in {keyspace['load_s']:.1f} s")

    backfill = report.get("backfill")
    if backfill:
        lines.append(f"backfill:     {backfill['published']} keys copied (events published) of {backfill['scanned']} "
                     f"keys scanned, {backfill['matched']} matched; skipped: {_counts(backfill['skipped'])}; "
                     f"bad values: {_counts(backfill['bad_values'])}")

    live = report.get("live_writes")
    if live:
        rates = " and ".join(f"{rate:g}/s" for rate in live["rate_per_s"])
        lines.append(f"live writes:  {live['made']} made ({live['during_backfill']} during the backfill, "
                     f"{live['during_steady_state']} in the steady state; {rates}, requested "
                     f"{live['requested_rate_per_s']:g}/s) to {live['keys']} keys; {live['replicated']} replicated: "
                     f"{live['keys_confirmed_in_kask']} of {live['keys']} keys hold their last seen time in Kask")

    published = report.get("capture_published")
    if published:
        lines.append(f"capture:      events published by origin: {_counts(published)}")

    replicator = report.get("replicator")
    if replicator:
        lines.append(f"replicator:   outcomes: {_counts({k: v for k, v in replicator['outcomes'].items() if v})}")

    probe = report.get("probe")
    if probe:
        lines.append(f"end-to-end delay, measured by a {probe['method']} (one every {probe['interval_s']:g} s):")
        lines.append(_delay_line("during backfill and catch-up", probe["during_backfill"]))
        lines.append(_delay_line("steady state", probe["steady_state"]))
    if replicator and replicator.get("end_to_end_le_s"):
        bounds = replicator["end_to_end_le_s"]
        lines.append(f"  replicator histogram over all {replicator['end_to_end_observations']} writes, backfill "
                     f"included (bucket bounds): " + ", ".join(f"{name} <= {_seconds(bound)}"
                                                              for name, bound in bounds.items()))

    verify = report.get("verify")
    if verify:
        verdict = "PASSED" if verify["passed"] else f"FAILED ({verify['bad']} bad keys)"
        lines.append(f"verify:       {verdict}: {verify['compared']} keys compared; {_counts(verify['categories'])}")

    lines.append("phases:")
    for phase in report.get("phases", []):
        lines.append(f"  {phase['seconds']:8.1f} s  {phase['name']}")
    startup = report.get("stack_startup_s")
    if startup:
        lines.append("             (service start: " + ", ".join(f"{name} {seconds:.1f} s"
                                                          for name, seconds in startup.items()) + ")")
    lines.append(f"  {report.get('total_s', 0):8.1f} s  total")

    lines.append(f"logs:         {report.get('workdir')} (configuration {report.get('config')})")
    for name, path in report.get("logs", {}).items():
        lines.append(f"  {name:<18} {path}")
    lines.append(f"report:       {report.get('workdir')}/report.json")

    if report.get("error"):
        lines.append(f"ERROR: {report['error']}")
    status = report.get("exit_status")
    lines.append("result:       " + ("OK: verify passed and every live write reached Kask" if status == 0
                                     else f"NOT OK (exit status {status})"))
    return "\n".join(lines)
