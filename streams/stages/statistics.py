"""Statistics: distinct users per window and place or technical-data group, k-anonymized.

Consumes stats-cells (partner-sharing pings by coarse H3 region, pseudonymized) and
stats-connections (reduced connection logs, one key), with purge requests and progress markers.
Asks the core: anonymizers.windows (tumbling event-time windows of distinct members, via the
table-backed adapter), anonymizers.regions (disjoint H3 regions of >= k users), anonymizers.kanon
(group thresholds) or anonymizers.dp (noisy cells; over a declared service area, every window of a
partition holding some of its cells is published, empty or not). Emits partner-statistics and
connection-statistics rows when a window closes, dead letters for events whose window had closed,
and purge reports.
"""
from __future__ import annotations

import orjson

from anonymizers.dp import KeyedRandomness, publish_noisy_cells
from anonymizers.kanon import publish_groups
from anonymizers.regions import RegionCount, publish_regions
from schemas.outputs import ConnectionStat, LocationStat
from schemas.timefmt import format_ts
from streams.app import (P, app, connection_members, connection_published, connection_statistics, location_members,
                         location_published, partner_statistics, settings, stats_cells, stats_connections)
from streams.plumbing.bulk import batch_agent
from streams.plumbing.deadletters import each_record, late
from streams.plumbing.outbox import progress_marker
from streams.plumbing.rebalance import ownership
from streams.plumbing.windowstate import SEP, TableBackedWindows
from streams.rules import rules
from streams.stages.erasure import report_purge

location_windows = TableBackedWindows(stats_cells.get_topic_name(), location_members, location_published,
                                      settings.stats_window_s, settings.stats_lateness_s, sources=range(P),
                                      every_window=bool(settings.dp_epsilon and settings.dp_domain))
connection_windows = TableBackedWindows(stats_connections.get_topic_name(), connection_members, connection_published,
                                        settings.stats_window_s, settings.stats_lateness_s, sources=range(P))
ownership.register(location_windows.states)  # a partition that moves is rebuilt from its tables
ownership.register(connection_windows.states)


@batch_agent(app, stats_cells)
async def aggregate_locations(tp, records) -> None:
    """Count distinct partner-sharing users per H3 cell and window; publish k-anonymized cells."""
    await each_record(tp, records, lambda tp_, record: _window_one(
        tp_, record, stats_cells, location_windows, "location_memberships", lambda b: b["cell"], _publish_locations))


@batch_agent(app, stats_connections)
async def aggregate_connections(tp, records) -> None:
    """Count distinct users per technical-data group and window; publish groups with >= k users."""
    await each_record(tp, records, lambda tp_, record: _window_one(
        tp_, record, stats_connections, connection_windows, "connection_memberships",
        lambda b: [SEP.join(g) for g in b["g"]], _publish_connections))


async def _window_one(tp, record, stage, windows: TableBackedWindows, purged: str, key_of, publish) -> None:
    """Feed one batch into a statistics stage's windows (or purge a member); publish windows that closed."""
    p = tp.partition
    body = orjson.loads(record.value)
    if "purge" in body:
        removed = windows.purge(p, set(body["purge"]))
        await report_purge(p, body.get("user"), purged, removed, body)
        return
    if "progress" in body:
        windows.advance(p, *progress_marker(body))
        for window in windows.close(p):
            await publish(p, window)
        return
    topic, source = body["src"]  # a batch from an Outbox: columns
    for ts, key, member, offset in zip(body["ts"], key_of(body), body["m"], body["o"]):
        # "seen" (handled before its window closed, delivered again after a fault): no dead letter.
        if windows.add(p, ts, key, member, source=source, offset=record.offset, input_offset=offset) == "late":
            await late(stage, p, [topic, source, offset], None, None, (
                f"event ts={format_ts(ts)} arrived after its statistics window closed (allowed lateness "
                f"{settings.stats_lateness_s} s); it was not counted. The raw message is at this position of "
                f"{topic} (no user data is copied into statistics dead letters)"))
    for window in windows.close(p):
        await publish(p, window)


async def _publish_locations(p: int, window) -> None:
    r = rules()
    if r.dp is None:
        rows = publish_regions(window.members, r.kanon)
    else:
        # Over a declared area, partition p publishes the area's cells its statistics keys hold.
        domain = r.dp_cells.get(p, frozenset()) if r.dp_area is not None else None
        rows = [] if domain == frozenset() else [
            RegionCount(c.cell, c.cell, c.resolution, (c.cell,), c.users)
            for c in publish_noisy_cells(window.members, r.dp, r.kanon.k,
                                          KeyedRandomness(r.secret, format_ts(window.start)), domain)]
    for row in rows:
        await partner_statistics.send(key=f"{format_ts(window.start)}|{row.region}".encode(), value=LocationStat(
            window_start=format_ts(window.start), window_end=format_ts(window.end), region=row.region,
            cell=row.cell, resolution=row.resolution, members=list(row.members), users=row.users, k=r.kanon.k,
            noisy=r.dp is not None).to_bytes())


async def _publish_connections(p: int, window) -> None:
    r = rules()
    groups = {tuple(key.split(SEP)): members for key, members in window.members.items()}
    for row in publish_groups(groups, r.kanon.k):
        await connection_statistics.send(key=f"{format_ts(window.start)}|{SEP.join(row.group)}".encode(),
                                         value=ConnectionStat(
            window_start=format_ts(window.start), window_end=format_ts(window.end), group_by=list(r.group_by),
            group=list(row.group), users=row.users, k=r.kanon.k).to_bytes())
