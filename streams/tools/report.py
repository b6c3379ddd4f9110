"""Read results back from Kafka and summarize them for people: counters, dead letters."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from streams.tools.kafkaio import latest_by_key, read_json
from streams.settings import Settings

INPUTS = ("geo-pings", "connection-logs", "consents")
FIELDS = ("received", "accepted", "rejected", "dropped_consent")


@dataclass
class TopicCounters:
    """Ingest counters of one input topic, summed over its partitions."""

    received: int = 0
    accepted: int = 0
    rejected: int = 0
    dropped_consent: int = 0

    @property
    def reconciles(self) -> bool:
        """received = accepted + rejected + dropped by consent."""
        return self.received == self.accepted + self.rejected + self.dropped_consent


@dataclass
class Counters:
    """Ingest counters per input topic."""

    topics: dict[str, TopicCounters] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)  # internal stage topic -> events past the lateness

    def total_received(self) -> int:
        return sum(c.received for c in self.topics.values())


def read_counters(settings: Settings) -> Counters:
    """Ingest counters of every worker, from the counters table's changelog."""
    latest = latest_by_key(settings, f"{settings.app_id}-counters-changelog")
    out = Counters({name: TopicCounters() for name in INPUTS})
    prefix = settings.topic("")
    for key, value in latest.items():
        if value is None:
            continue
        topic = json.loads(key).rsplit("/", 1)[0]
        name = topic[len(prefix):] if topic.startswith(prefix) else topic
        counts = json.loads(value)
        if name not in out.topics:
            if counts.get("late"):
                out.late[name] = out.late.get(name, 0) + int(counts["late"])
            continue
        for f in FIELDS:
            setattr(out.topics[name], f, getattr(out.topics[name], f) + int(counts.get(f, 0)))
    return out


def format_counters(counters: Counters) -> str:
    """A small table of the counters, with the reconciliation check."""
    lines = [f"{'topic':<18}{'received':>10}{'accepted':>10}{'rejected':>10}{'dropped':>10}  reconciles"]
    for name, c in counters.topics.items():
        lines.append(f"{name:<18}{c.received:>10}{c.accepted:>10}{c.rejected:>10}{c.dropped_consent:>10}  "
                     f"{'yes' if c.reconciles else 'NO'}")
    stages = {"crossing-cells": "crossings", "stats-cells": "partner statistics",
              "stats-connections": "connection statistics"}
    for name, n in sorted(counters.late.items()):
        lines.append(f"accepted but too late for {stages.get(name, name)}: {n} (dead-lettered as late_event)")
    return "\n".join(lines)


def dead_letter_reasons(settings: Settings) -> Counter:
    """How many dead letters per (source topic, reason)."""
    prefix = settings.topic("")
    reasons: Counter = Counter()
    for letter in read_json(settings, settings.topic("dead-letters")):
        reasons[(letter["source_topic"].removeprefix(prefix), letter["reason"])] += 1
    return reasons


def current_crossings(records: list[tuple[bytes, dict | None]]) -> dict[str, dict[str, dict]]:
    """What each user is shown now: per (user, other) key the latest record, tombstoned keys left out.

    `records` are (key, value) in topic order (read_crossings), as a consumer of the compacted
    `crossings` topic reads them; the same holds after compaction has run.
    """
    latest: dict[bytes, dict | None] = {}
    for key, value in records:
        latest[key] = value
    shown: dict[str, dict[str, dict]] = {}
    for key, value in latest.items():
        if value is not None:
            shown.setdefault(value["user_id"], {})[value["other_user_id"]] = value
    return shown


def read_crossings(settings: Settings) -> list[tuple[bytes, dict | None]]:
    """Every record of the crossings topic as (key, parsed value or None for a tombstone), in order per partition."""
    from streams.tools.kafkaio import read_topic

    return [(r.key, None if r.value is None else json.loads(r.value))
            for r in read_topic(settings, settings.topic("crossings"))]


def read_statistics(settings: Settings, name: str):
    """A statistics topic as a pandas DataFrame, one row per published record (deduplicated by key).

    partner-statistics rows have `region`, `cell`, `resolution` and `members` (a list of H3 cells);
    rows written before regions existed read as single-cell regions.
    """
    rows = {}
    for rec in read_topic_records(settings, name):
        rows[rec.key] = json.loads(rec.value)
    return statistics_frame(list(rows.values()))


def statistics_frame(records: list[dict]):
    """Published statistics records as a DataFrame sorted by window and users (see read_statistics)."""
    import pandas as pd

    frame = pd.DataFrame(records)
    if not frame.empty and "cell" in frame.columns:
        # Rows written before regions (issue 19) are single cells.
        if "region" not in frame.columns:
            frame["region"] = frame["cell"]
        if "members" not in frame.columns:
            frame["members"] = None
        frame["region"] = frame["region"].fillna(frame["cell"])
        frame["members"] = [m if isinstance(m, list) else [c] for m, c in zip(frame["members"], frame["cell"])]
    if not frame.empty:
        for col in ("window_start", "window_end"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        frame = frame.sort_values([c for c in ("window_start", "users") if c in frame.columns],
                                  ascending=[True, False][: 2 if "users" in frame.columns else 1])
    return frame.reset_index(drop=True)


def read_topic_records(settings: Settings, name: str):
    from streams.tools.kafkaio import read_topic

    return [r for r in read_topic(settings, settings.topic(name)) if r.value is not None]


@dataclass
class CrossingCheck:
    """Streamed crossing pairs against the batch detector run on the pings the worker routed."""

    routed_pings: int
    late_pings: int
    excluded_users: int  # users who withdrew crossings or were erased: their pairs depend on when it happened
    streamed_pairs: int
    recomputed_pairs: int
    only_streamed: list[tuple[str, str]]
    only_recomputed: list[tuple[str, str]]
    records_compared: int = 0  # keys (participant|other) of pairs found on both sides
    records_differing: list[str] = field(default_factory=list)  # keys whose final record is not the batch's

    @property
    def identical(self) -> bool:
        return not self.only_streamed and not self.only_recomputed and not self.records_differing


def check_crossings(settings: Settings, crossing_records: list[tuple[bytes, dict | None]] | None = None,
                    progress=None) -> CrossingCheck:
    """Recompute the crossing pairs from the crossing-cells topic and compare with the crossings topic.

    Each ping the worker accepted for crossings is in crossing-cells with its home key (twice if it was
    re-fetched: at-least-once); the batch detector (geo.crossings.detect_crossings, the same rules)
    finds the pairs they make, and the final record under each key (what a reader of the compacted
    topic sees) must be the batch's latest record of the pair (geo.crossings.latest_per_pair). Users who withdrew crossings (or geolocation) consent or were erased are
    left out on both sides (their pairs depend on the moment consent changed): those of a consent
    record saying so, or of a tombstone on `consents`. Pings late for the detector were dead-lettered, not matched: their pairs
    can only show on the recomputed side (`late_pings` says how many there were).
    `crossing_records`: the crossings topic already read (read_crossings), if at hand.
    `progress`: a callable (phase, done, total, unit) told how reading and the search advance.
    """
    import orjson
    import pandas as pd

    from geo.crossings import detect_crossings, latest_per_pair
    from geo.zones import SensitiveZones
    from schemas.outputs import crossing_key
    from schemas.timefmt import format_ts
    from streams.tools.kafkaio import read_topic

    rows = []
    for n, rec in enumerate(read_topic(settings, settings.topic("crossing-cells")), start=1):
        if progress is not None and n % 1000 == 0:
            progress("reading crossing-cells", n, None, "msg")
        if rec.value is None or rec.key == b"purge":
            continue
        body = orjson.loads(rec.value)
        if "k" not in body:
            continue
        for k, h, u, ts, lat, lon, acc in zip(body["k"], body["h"], body["u"], body["ts"], body["lat"],
                                               body["lon"], body["acc"]):
            if k == h:
                rows.append((u, ts, lat, lon, acc))
    pings = pd.DataFrame(rows, columns=["user_id", "ts", "lat", "lon", "accuracy_m"]).drop_duplicates()
    excluded = _users_who_withdrew(settings)
    final: dict[bytes, dict | None] = {}
    for key, rec in read_crossings(settings) if crossing_records is None else crossing_records:
        final[key] = rec
    streamed = {tuple(sorted((rec["user_id"], rec["other_user_id"]))) for rec in final.values() if rec is not None}
    zones = SensitiveZones.from_geojson(settings.zones_path) if settings.zones_path else None
    batch = detect_crossings(pings, settings.crossing_params(), zones, progress=progress) if len(pings) else None
    expected = {}
    if batch is not None:
        for a, b, ts, place, band in latest_per_pair(batch).itertuples(index=False):
            expected[(a, b)] = (format_ts(ts), place, band)

    def kept(pairs) -> set:
        return {p for p in pairs if p[0] not in excluded and p[1] not in excluded}

    s, r = kept(streamed), kept(expected)
    differing = []
    for a, b in sorted(s & r):
        for user, other in ((a, b), (b, a)):
            rec = final.get(crossing_key(user, other))
            if rec is None or (rec["ts"], rec["place"], rec["distance_band"]) != expected[(a, b)]:
                differing.append(f"{user}|{other}")
    late = read_counters(settings).late.get("crossing-cells", 0)
    return CrossingCheck(len(pings), late, len(excluded), len(s), len(r), sorted(s - r), sorted(r - s),
                         2 * len(s & r), differing)


def _users_who_withdrew(settings: Settings) -> set[str]:
    """Users with a consent record switching crossings or geolocation off, or deleting the account
    (the record, or its tombstone once compacted), on the consents topic."""
    from streams.tools.kafkaio import read_topic

    users = set()
    for rec in read_topic(settings, settings.topic("consents")):
        if rec.value is None:
            users.add(rec.key.decode(errors="replace"))
            continue
        try:
            doc = json.loads(rec.value)
        except ValueError:
            continue  # rejected by the worker: changed no consent
        if isinstance(doc, dict) and isinstance(doc.get("user_id"), str) and (
                doc.get("crossings") is False or doc.get("geolocation") is False or doc.get("deleted") is True):
            users.add(doc["user_id"])
    return users


def format_crossing_check(check: CrossingCheck) -> str:
    head = (f"{check.routed_pings} pings routed for crossings; {check.streamed_pairs} streamed pairs vs "
            f"{check.recomputed_pairs} recomputed by the batch detector, leaving out {check.excluded_users} "
            f"users who withdrew or were erased")
    head += f"; final records under {check.records_compared} keys"
    if check.identical:
        return head + ": identical"
    lines = [head + ": DIFFERENT",
             f"  only streamed ({len(check.only_streamed)}): {check.only_streamed[:5]}",
             f"  only recomputed ({len(check.only_recomputed)}): {check.only_recomputed[:5]}",
             f"  final record not the batch's ({len(check.records_differing)}): {check.records_differing[:5]}"]
    if check.late_pings:
        lines.append(f"  {check.late_pings} pings came too late for a stage and were not matched; "
                     "pairs of late pings are expected only on the recomputed side")
    return "\n".join(lines)
