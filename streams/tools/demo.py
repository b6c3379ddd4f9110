"""The main job end to end: topics, a worker, a simulated city, and a summary for people."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from anonymizers.kanon import KAnonParams
from anonymizers.regions import RegionCount, publish_regions
from anonymizers.utility import measure_utility
from schemas.timefmt import format_ts
from streams.tools.report import dead_letter_reasons, format_counters, read_counters
from streams.tools.simulator import SimulationParams, partner_memberships
from streams.settings import Settings
from streams.topics import create_topics

# The simulated city's service area (Paris inside the Périphérique and around): declared for the demo,
# where partner statistics are differentially private by default (README, "Partner statistics").
SIMULATED_CITY_AREA = Path(__file__).resolve().parents[2] / "geo" / "data" / "service-area-paris.geojson"


def worker_env(settings: Settings, web_port: int) -> dict[str, str]:
    """Environment for a worker subprocess that sees the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSPATHS_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"CROSSPATHS_{name.upper()}"] = str(value)
    env["CROSSPATHS_WEB_PORT"] = str(web_port)
    return env


def start_worker(settings: Settings, web_port: int, log_path: Path) -> subprocess.Popen:
    """Start `crosspaths worker` in the background, logging to log_path; return once its web port answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--web-port", str(web_port)],
                            env=worker_env(settings, web_port), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/health/", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_worker(proc)
    raise RuntimeError(f"worker web port {web_port} did not answer within 90 s; see {log_path}")


def stop_worker(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop a worker started by start_worker (TERM, then KILL)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_counters(settings: Settings, expected: dict[str, int], timeout_s: float) -> bool:
    """Wait until the workers have counted every produced message; show progress."""
    deadline = time.monotonic() + timeout_s
    total = sum(expected.values())
    while time.monotonic() < deadline:
        counters = read_counters(settings)
        done = sum(min(counters.topics[t].received, n) for t, n in expected.items())
        print(f"\r  processed {done}/{total} messages", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)
            return True
        time.sleep(2)
    print(file=sys.stderr)
    return False


# Every topic the worker's consumer group reads: inputs and the stages in between.
PIPELINE_TOPICS = ("consents", "geo-pings", "connection-logs", "crossing-cells", "crossing-pairs", "stats-cells",
                   "stats-connections", "erasure-reports")


def wait_for_drain(settings: Settings, timeout_s: float, quiet_s: float = 3.0) -> bool:
    """Wait until the worker's consumer group has no lag on any input or internal topic for quiet_s.

    No lag once is not enough: a stage sends progress markers once a second after the records that
    made them, so the group must stay without lag for a few seconds before the outputs are final.
    Returns False, having said which topics still lag, if that does not happen within timeout_s.
    A retriable Kafka error (a group coordinator or leader that moved with a broker) is asked again
    until timeout_s, then raised.
    """
    from streams.tools.kafkaio import group_lag, is_retriable

    topics = [settings.topic(name) for name in PIPELINE_TOPICS]
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while True:
        try:
            lag = group_lag(settings, settings.app_id, topics)
        except Exception as exc:
            if not is_retriable(exc) or time.monotonic() > deadline:
                raise
            quiet_since = None  # the lag is unknown: no quiet period spans it
            time.sleep(1)
            continue
        behind = {t.removeprefix(settings.topic_prefix): n for t, n in lag.items() if n}
        now = time.monotonic()
        if not behind:
            quiet_since = quiet_since or now
            if now - quiet_since >= quiet_s:
                print(file=sys.stderr)
                return True
        else:
            quiet_since = None
        print(f"\r  waiting for every stage to drain: {sum(behind.values())} messages behind  ", end="",
              file=sys.stderr, flush=True)
        if behind and now > deadline:
            print(f"\nTimed out after {timeout_s:.0f} s waiting for the stages to drain; still behind: "
                  + ", ".join(f"{t} {n}" for t, n in sorted(behind.items())))
            return False
        time.sleep(1)


def run_demo(settings: Settings, users: int, hours: float, seed: int, timeout_s: float, simulate) -> None:
    """Run the whole pipeline once on a fresh set of topics and print what came out."""
    run = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    update = {"topic_prefix": f"{settings.topic_prefix}demo-{run}.", "app_id": f"{settings.app_id}-demo-{run}"}
    if settings.dp_epsilon and settings.dp_domain is None:
        update["dp_domain"] = SIMULATED_CITY_AREA  # the city is simulated in Paris: its service area is known
    settings = settings.model_copy(update=update)
    print(f"Run {run}: topics prefixed '{settings.topic_prefix}', app id '{settings.app_id}'")
    if "dp_domain" in update:
        print(f"Partner statistics: differential privacy over the simulated city's area ({SIMULATED_CITY_AREA.name}; "
              "CROSSPATHS_DP_DOMAIN to declare another, CROSSPATHS_DP_EPSILON=0 for k-anonymous regions alone)")
    print(f"Created {len(create_topics(settings))} topics")
    log = Path(settings.home) / "logs" / f"worker-{run}.log"
    proc = start_worker(settings, settings.web_port, log)
    print(f"Worker running (pid {proc.pid}, web http://127.0.0.1:{settings.web_port}/counters/, log {log})")
    try:
        start = (int(time.time()) // 60) * 60 - hours * 3600  # as `crosspaths simulate` picks it
        produced = simulate(settings, users, hours, seed, 0.01, format_ts(start))
        print("Produced " + ", ".join(f"{n} {t}" for t, n in produced.items()))
        started = time.monotonic()
        if not wait_for_counters(settings, produced, timeout_s):
            print(f"Timed out after {timeout_s:.0f} s waiting for the worker; partial results below.")
        elif not wait_for_drain(settings, max(30.0, timeout_s - (time.monotonic() - started))):
            print("Partial results below: some stages had not caught up (the check may say DIFFERENT).")
        print_summary(settings)
        print_outputs(settings, SimulationParams(users=users, hours=hours, start=start, seed=seed,
                                                 malformed_share=0.01))
    finally:
        stop_worker(proc)
    print(f"\nExplore this run with: CROSSPATHS_TOPIC_PREFIX={settings.topic_prefix} "
          f"CROSSPATHS_APP_ID={settings.app_id} crosspaths stats counters")


def print_summary(settings: Settings) -> None:
    """What came out of the pipeline, for a person."""
    print("\n== Ingest ==")
    print(format_counters(read_counters(settings)))
    reasons = dead_letter_reasons(settings)
    print(f"\n== Dead letters: {sum(reasons.values())} ==")
    for (topic, reason), n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"  {topic:<16} {reason:<22} {n}")


def print_outputs(settings: Settings, simulated: SimulationParams | None = None) -> None:
    """Crossings and statistics that came out, for a person (with the map's utility if `simulated` is given)."""
    from streams.tools.report import (check_crossings, current_crossings, format_crossing_check, read_crossings,
                                read_statistics)

    records = read_crossings(settings)
    found = [r for _, r in records if r is not None]
    tombstones = sum(r is None for _, r in records)
    shown = current_crossings(records)
    pairs = {tuple(sorted((r["user_id"], r["other_user_id"]))) for r in found}
    print(f"\n== Crossings: {len(pairs)} distinct pairs, {len(found)} participant records, "
          f"{tombstones} tombstones (withdrawals, erasures); {sum(len(v) for v in shown.values())} shown to "
          f"{len(shown)} users now ==")
    for r in found[:5]:
        print(f"  {r['user_id']} crossed {r['other_user_id']} at {r['ts']} in H3 cell {r['place']} "
              f"({r['distance_band']})")
    print("  checked against the batch detector (crosspaths crossings verify):")
    print("  " + format_crossing_check(check_crossings(settings, records)).replace("\n", "\n  "))
    loc = read_statistics(settings, "partner-statistics")
    print(f"\n== Partner statistics (k = {settings.k}): {len(loc)} published regions ==")
    from streams.rules import Rules, partner_statistics_statement  # the same statement the worker prints

    print("  " + partner_statistics_statement(Rules.from_settings(settings)))
    if not loc.empty:
        kanon = KAnonParams(k=settings.k, base_resolution=settings.h3_base_resolution,
                            coarsest_resolution=settings.h3_coarsest_resolution)
        memberships = {} if simulated is None else partner_memberships(
            simulated, kanon, settings.stats_window_s, settings.stats_lateness_s)
        for ws, sub in loc.groupby("window_start"):
            print(f"  window {ws:%Y-%m-%d %H:%M}: {len(sub)} regions, users per region {sub['users'].min()}-"
                  f"{sub['users'].max()}, resolutions {sorted(sub['resolution'].unique().tolist())}")
            if simulated is not None:
                regions = [RegionCount(r.region, r.cell, int(r.resolution), tuple(r.members), int(r.users))
                           for r in sub.itertuples()]
                window = memberships.get(ws.timestamp(), {})
                print(f"    utility against the simulator's opted-in memberships: "
                      f"{measure_utility(regions, window).line(settings.k)}")
                if settings.dp_epsilon and window:
                    print("    " + dp_cost_line(regions, window, kanon))
    conn = read_statistics(settings, "connection-statistics")
    print(f"\n== Connection statistics (k = {settings.k}): {len(conn)} published groups ==")
    if not conn.empty:
        latest = conn[conn["window_start"] == conn["window_start"].max()].nlargest(6, "users")
        for _, row in latest.iterrows():
            print(f"  {row['window_start']:%H:%M} {' / '.join(row['group']):<40} {row['users']} users")
    if not loc.empty:
        from streams.tools.maps import render_cells

        ws = loc["window_start"].max()
        out = render_cells(loc[loc["window_start"] == ws], Path(settings.home) / "maps" /
                           f"{settings.app_id}.png", f"Partner statistics, window {ws:%Y-%m-%d %H:%M} UTC")
        print(f"\nHeatmap of the latest window: {out}")


def dp_cost_line(published: list[RegionCount], window: dict[str, set], kanon: KAnonParams) -> str:
    """What differential privacy cost in a window: its noisy cells' error, and what k alone would have published."""
    import h3

    errors = []
    for row in published:
        res = h3.get_resolution(row.cell)
        true = set().union(*(users for cell, users in window.items() if h3.cell_to_parent(cell, res) == row.cell))
        errors.append(abs(row.users - len(true)))
    k_alone = measure_utility(publish_regions(window, kanon), window)
    error = f"mean |noisy - true| {sum(errors) / len(errors):.1f} users" if errors else "no cell published"
    return f"DP cost: {error}; k alone (CROSSPATHS_DP_EPSILON=0) would publish {k_alone.line(kanon.k)}"
