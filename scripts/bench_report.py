"""Tables and ratios from scripts/bench's results: kept apart so the figures can be
re-rendered from a results.json without running anything (`python bench_report.py FILE`)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

LOWER, HIGHER = "lower", "higher"


@dataclass(frozen=True)
class Metric:
    """One column: which measure, which figure of it, and which way is better."""

    title: str
    measure: str
    field: str  # a key of the measure's result, or "traffic.<key>"
    better: str = LOWER
    scale: float = 1.0  # shown value = raw * scale
    digits: int = 1


METRICS = (
    Metric("mount s", "mount", "seconds", digits=2),
    Metric("first byte ms", "first_byte", "median_ms", digits=0),
    Metric("cover ms", "covers", "median_ms", digits=0),
    Metric("scan cold s", "scan_cold", "seconds"),
    Metric("scan cold MB", "scan_cold", "traffic.bytes_down", scale=1e-6, digits=0),
    Metric("scan cold req", "scan_cold", "traffic.requests", digits=0),
    Metric("scan warm s", "scan_warm", "seconds", digits=2),
    Metric("scan warm req", "scan_warm", "traffic.requests", digits=0),
    Metric("mpd cold s", "mpd_cold", "seconds"),
    Metric("mpd cold MB", "mpd_cold", "traffic.bytes_down", scale=1e-6, digits=0),
    Metric("mpd cold req", "mpd_cold", "traffic.requests", digits=0),
    Metric("mpd warm s", "mpd_warm", "seconds", digits=2),
    Metric("mpd warm req", "mpd_warm", "traffic.requests", digits=0),
    Metric("seq cold MB/s", "seq_cold", "mb_per_s", HIGHER),
    Metric("seq warm MB/s", "seq_warm", "mb_per_s", HIGHER),
    Metric("find cold s", "find_cold", "seconds", digits=2),
    Metric("find warm s", "find_warm", "seconds", digits=2),
    Metric("seek ms", "seek", "median_ms", digits=0),
    Metric("seek max ms", "seek", "max_ms", digits=0),
    Metric("ffmpeg s", "ffmpeg", "median_s", digits=2),
    Metric("cp album s", "cp", "seconds", digits=2),
    Metric("stalls", "playback", "stalls", digits=0),
    Metric("next track cached", "playback", "next_cached", HIGHER, digits=0),
    Metric("next track ms", "playback", "next_max_ms", digits=0),
)
TRAFFIC_MEASURES = ("mount", "first_byte", "covers", "scan_cold", "scan_warm", "mpd_cold", "mpd_warm", "seq_cold",
                    "seq_warm", "find_cold", "find_warm", "seek", "ffmpeg", "cp", "playback")
# reader floor -> the cold measure whose bytes are compared with it
FLOOR_MEASURES = {"mutagen": ("scan_cold", "mutagen scan"), "mpd": ("mpd_cold", "MPD update")}


def value(measure: dict[str, Any] | None, field: str) -> float | None:
    """A figure of a measure that succeeded, else None."""
    if not measure or not measure.get("ok"):
        return None
    if field.startswith("traffic."):
        return measure["traffic"][field.split(".", 1)[1]]
    return measure.get(field)


def _cell(measure: dict[str, Any] | None, metric: Metric) -> str:
    if measure is None:
        return "—"
    if not measure.get("ok"):
        return f"FAIL: {measure.get('error', '?')[:48]}"
    raw = value(measure, metric.field)
    return "—" if raw is None else f"{raw * metric.scale:,.{metric.digits}f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |"


def main_table(results: dict[str, Any]) -> str:
    """One row per system and a row for the physical limits."""
    lines = [_row(["system"] + [m.title for m in METRICS]), _row(["---"] * (len(METRICS) + 1))]
    for system, measures in results["systems"].items():
        lines.append(_row([system] + [_cell(measures.get(m.measure), m) for m in METRICS]))
    limits = results.get("limits", {})
    lines.append(_row(["limit"] + [_limit_cell(limits.get(m.title), m) for m in METRICS]))
    return "\n".join(lines)


def _limit_cell(limit: float | None, metric: Metric) -> str:
    return "—" if limit is None else f"{limit:,.{metric.digits}f}"


def traffic_table(results: dict[str, Any]) -> str:
    """Bytes received and requests through the WAN proxy in each measure."""
    header = _row(["system"] + list(TRAFFIC_MEASURES))
    lines = [header, _row(["---"] * (len(TRAFFIC_MEASURES) + 1))]
    for system, measures in results["systems"].items():
        cells = []
        for name in TRAFFIC_MEASURES:
            traffic = (measures.get(name) or {}).get("traffic")
            cells.append("—" if not traffic else
                         f"{traffic['bytes_down'] / 1e6:,.1f} MB / {traffic['requests']} req")
        lines.append(_row([system] + cells))
    return "\n".join(lines)


def scale_table(results: dict[str, Any]) -> str:
    scale = results.get("scale")
    if not scale:
        return ""
    if not scale.get("ok"):
        return f"Scale (lockerfs): FAIL: {scale.get('error')}"
    catalog_mb = sum(scale["catalog_bytes"].values()) / 1e6
    columnar_mb = sum(size for key, size in scale["catalog_bytes"].items() if "/snapshot3/" in key) / 1e6
    applied = scale.get("refresh_applied_s")
    return "\n".join([
        _row(["catalog tracks", "mount ready s", "ls -l album ms", "find -type f s", "files", "RSS MB",
              "refresh 1,000 s", "refresh as logged s", "catalog MB (columnar)", "read at mount MB"]),
        _row(["---"] * 10),
        _row([f"{scale['tracks']:,}", f"{scale['mount_ready_s']:.2f}", f"{scale['ls_album_ms']:.0f}",
              f"{scale['find_s']:.2f}", f"{scale['files']:,}", f"{scale['rss_mb']:.0f}",
              f"{scale['refresh_s']:.2f} (polling every {scale['refresh_interval_s']:g})",
              "—" if applied is None else f"{applied:.3f}", f"{catalog_mb:.1f} ({columnar_mb:.1f})",
              f"{scale['startup_traffic']['bytes_down'] / 1e6:.1f}"]),
    ])


def floors_section(results: dict[str, Any]) -> list[str]:
    """What each reader reads of a local copy, and each system's cold bytes as a
    multiple of it; for MPD also the best speed-up over each peer that its
    floor allows (the peer's bytes over the floor)."""
    floors = results.get("floors") or {}
    if not floors:
        return []
    lines = ["What readers read of a local copy (scripts/countfs.py, direct_io: the floor for bytes):", "",
             _row(["reader", "seconds", "files opened", "reads", "requested MB", "read MB", "unique MB"]),
             _row(["---"] * 7)]
    for reader, floor in floors.items():
        title = FLOOR_MEASURES[reader][1]
        if not floor.get("ok"):
            lines.append(_row([title, f"FAIL: {floor.get('error', '?')[:60]}"] + [""] * 5))
            continue
        lines.append(_row([title, f"{floor['seconds']:.1f}", f"{floor['opens']:,}", f"{floor['reads']:,}",
                           f"{floor['requested'] / 1e6:,.1f}", f"{floor['bytes'] / 1e6:,.1f}",
                           f"{floor['unique'] / 1e6:,.1f}"]))
    lines += ["", "Cold bytes through the WAN as a multiple of the reader's floor: of its unique MB "
              "(what a perfect cache fetches once; the limit row), and of its read MB (re-reads counted "
              "each time):", ""]
    for reader, floor in floors.items():
        measure, title = FLOOR_MEASURES[reader]
        if not floor.get("ok") or not floor["unique"]:
            continue
        parts = []
        for system, measures in results["systems"].items():
            moved = value(measures.get(measure), "traffic.bytes_down")
            if moved is not None:
                parts.append(f"{system} {moved / floor['unique']:.2f}x unique, {moved / floor['bytes']:.2f}x read")
        if parts:
            lines.append(f"- {title}: " + ", ".join(parts))
        if reader == "mpd":
            for peer, measures in results["systems"].items():
                moved = value(measures.get(measure), "traffic.bytes_down")
                if peer != "lockerfs" and moved:
                    lines.append(f"- best MPD speed-up over {peer} that the floor allows "
                                 f"({peer}'s bytes / unique floor): {moved / floor['unique']:.1f}x")
    return lines


def failures(results: dict[str, Any]) -> list[str]:
    found = []
    for system, measures in results["systems"].items():
        for name, measure in measures.items():
            if isinstance(measure, dict) and measure.get("ok") is False:
                found.append(f"{system} {name}: {measure.get('error')}")
    return found


def ratios(results: dict[str, Any], subject: str = "lockerfs") -> list[str]:
    """For each peer, how many times better (>1) or worse (<1) the subject is per metric."""
    systems = results["systems"]
    if subject not in systems:
        return []
    lines = []
    for peer, measures in systems.items():
        if peer == subject:
            continue
        parts = []
        for metric in METRICS:
            ours = value(systems[subject].get(metric.measure), metric.field)
            theirs = value(measures.get(metric.measure), metric.field)
            if ours is None or theirs is None or min(ours, theirs) <= 0:
                continue
            factor = theirs / ours if metric.better == LOWER else ours / theirs
            parts.append(f"{metric.title} {factor:.2f}x")
        lines.append(f"{subject} vs {peer} (>1 means {subject} is better): " + (", ".join(parts) or "nothing comparable"))
    return lines


def render(results: dict[str, Any]) -> str:
    settings = results["settings"]
    if "library" not in results:  # --steps scale alone
        return (f"WAN: RTT {settings['rtt_ms']:g} ms, {settings['mbit']:g} Mbit/s (self-check: "
                f"{results['selfcheck']['rtt_ms']:.1f} ms, {results['selfcheck']['rate_mbit']:.1f} Mbit/s)\n\n"
                + scale_table(results) + "\n")
    parts = [
        f"WAN: RTT {settings['rtt_ms']:g} ms, {settings['mbit']:g} Mbit/s "
        f"(self-check: {results['selfcheck']['rtt_ms']:.1f} ms, {results['selfcheck']['rate_mbit']:.1f} Mbit/s); "
        f"library: {results['library'].get('profile', '?')}, {results['library']['tracks']} tracks, "
        f"{results['library']['bytes'] / 1e9:.2f} GB, "
        f"large file {results['library']['big_bytes'] / 1e6:.0f} MB; "
        f"page cache dropped between cold and warm: {'yes' if results['page_cache_drop'] else 'no'}",
        "", main_table(results), "", "Traffic through the WAN per measure:", "", traffic_table(results),
    ]
    floor = results.get("get_floor_ms")
    if floor:  # what any S3 client pays for a cold read: the yardstick for first byte and seek
        rtt = results["selfcheck"]["rtt_ms"]
        parts[1:1] = ["", "A bare ranged GET through the WAN (boto3, warm connection), median: "
                      + ", ".join(f"{size} {ms:g} ms = {ms / rtt:.2f} RTT" for size, ms in floor.items()) + "."]
    floor_lines = floors_section(results)
    if floor_lines:
        parts += [""] + floor_lines
    scale = scale_table(results)
    if scale:
        parts += ["", scale]
    problems = failures(results)
    if problems:
        parts += ["", "Failures:"] + [f"- {line}" for line in problems]
    ratio_lines = ratios(results)
    if ratio_lines:
        parts += [""] + ratio_lines
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as source:
        print(render(json.load(source)), end="")
