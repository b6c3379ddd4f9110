"""The `crosspaths` command."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from streams.settings import Settings, get_settings


def _settings() -> Settings:
    return get_settings()


def _fail(message: str) -> None:
    click.secho(message, fg="red", err=True)
    sys.exit(1)


@click.group()
def main() -> None:
    """Crosspaths: privacy-first crossings and k-anonymized statistics on Kafka."""


# --------------------------------------------------------------------------- broker
@main.group()
def broker() -> None:
    """A local single-node Kafka broker (Java 17+ and Maven needed)."""


@broker.command("start")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for the broker.")
@click.option("--secure", is_flag=True, help="SASL/SCRAM-SHA-512 and ACLs (deny when none matches); writes a "
              "client properties file per principal under the broker's folder, clients/<principal>.properties.")
@click.option("--nodes", type=click.IntRange(1, 9), default=None,
              help="KRaft processes (broker and controller each); 3: replication 3, min ISR 2 for Kafka's own "
                   "topics. Default: what the broker was formatted with, else 1.")
@click.option("--tls", is_flag=True, help="With --secure: SASL over TLS, the brokers' certificate signed by a local "
              "CA made once (tls/ca.pem under the broker's folder; the client files trust it).")
def broker_start(timeout: float, secure: bool, nodes: int | None, tls: bool) -> None:
    """Fetch the jars once, format storage once, start the broker; return when it answers."""
    from streams.tools import broker as b

    try:
        click.echo(b.start(_settings(), timeout_s=timeout, secure=secure, nodes=nodes, tls=tls))
    except b.BrokerError as exc:
        _fail(str(exc))


@broker.command("stop")
def broker_stop() -> None:
    """Stop the local broker."""
    from streams.tools import broker as b

    click.echo(b.stop(_settings()))


@broker.command("status")
def broker_status() -> None:
    """Whether the configured cluster answers (exit 1 if not)."""
    from streams.tools import broker as b

    ok, line = b.status(_settings())
    click.echo(line)
    sys.exit(0 if ok else 1)


@broker.command("reset")
def broker_reset() -> None:
    """Stop the local broker and delete its data (the jar cache stays)."""
    from streams.tools import broker as b

    click.echo(b.reset(_settings()))


@broker.command("rotate-password")
@click.argument("principal")
def broker_rotate_password(principal: str) -> None:
    """Give PRINCIPAL of the local secured broker a new random password (on the broker, in credentials.json and
    clients/PRINCIPAL.properties). Needs the admin's credentials (CROSSPATHS_CLIENT_PROPERTIES)."""
    from kafka.errors import KafkaError

    from streams.clients import admin_client
    from streams.tools import broker as b
    from streams.tools.credentials import rotate_password

    s = _settings()
    paths = b.paths_for(s)
    if not paths.credentials.exists():
        _fail(f"no secured local broker in {paths.root} (crosspaths broker start --secure)")
    admin = admin_client(s, client_id="crosspaths-credentials")
    try:
        written = rotate_password(admin, paths.credentials, paths.clients, principal)
    except (KafkaError, RuntimeError, ValueError) as exc:
        _fail(f"rotate-password failed: {exc}")
    finally:
        admin.close()
    click.echo(f"new password of {principal} set on the broker; hand {written} to that party "
               f"(its connections made with the old one stay until they reconnect)")


# --------------------------------------------------------------------------- acl
@main.group()
def acl() -> None:
    """Who may read and write what: the principals of streams/principals.py."""


@acl.command("apply")
def acl_apply() -> None:
    """Make the cluster's ACLs for the declared principals exactly the table's (idempotent; admin credentials)."""
    from kafka.errors import KafkaError

    from streams.tools.acl import apply_acls

    try:
        change = apply_acls(_settings())
    except (KafkaError, RuntimeError) as exc:
        _fail(f"acl apply failed: {exc}")
    for line in change.lines():
        click.echo(line)


@acl.command("list")
def acl_list() -> None:
    """The declared principals, what each is for, and its grants (no cluster needed)."""
    from streams.principals import principal_table

    for principal in principal_table(_settings()):
        click.echo(f"{principal.name}: {principal.purpose}")
        for g in principal.grants:
            click.echo(f"    {g.operation:<17} {g.resource} {g.name}{'*' if g.pattern == 'prefixed' else ''}")


# --------------------------------------------------------------------------- topics
@main.group()
def topics() -> None:
    """The pipeline's topics."""


@topics.command("create")
def topics_create() -> None:
    """Create every missing topic (idempotent)."""
    from streams.topics import create_topics

    for line in create_topics(_settings()):
        click.echo(line)


@topics.command("list")
def topics_list() -> None:
    """Show the declared topics with their key, how long a record can stay, and cleanup policy."""
    from streams.topics import topic_specs

    s = _settings()
    check = s.broker_retention_check_ms
    for spec in topic_specs(s):
        lifetime = spec.lifetime_ms(check)
        bound = (f"gone within {lifetime / 3_600_000:g} h" if lifetime is not None
                 else f"tombstoned keys gone within {spec.erased_within_ms(check) / 3_600_000:g} h")
        click.echo(f"{s.topic(spec.name):<28} key={spec.key:<16} {bound:<40} "
                   f"{'compact' if spec.compacted else 'delete'}{'  (internal)' if spec.internal else ''}"
                   f"{'' if spec.personal else '  (no personal data)'}")


# --------------------------------------------------------------------------- worker
@main.command()
@click.option("--web-port", type=int, default=None, help="Web port of this worker (one per worker).")
@click.option("--loglevel", default="warn", show_default=True,
              type=click.Choice(["crit", "error", "warn", "info", "debug"]))
def worker(web_port: int | None, loglevel: str) -> None:
    """Run a Faust worker (start several, each with its own --web-port, to scale out)."""
    if web_port is not None:
        os.environ["CROSSPATHS_WEB_PORT"] = str(web_port)
        get_settings.cache_clear()
    from streams.worker import run

    run(loglevel)


# --------------------------------------------------------------------------- simulate
@main.command()
@click.option("--users", default=1500, show_default=True)
@click.option("--hours", default=2.0, show_default=True, help="Simulated time span, ending now.")
@click.option("--seed", default=7, show_default=True)
@click.option("--malformed-share", default=0.01, show_default=True)
@click.option("--start", default=None, help="RFC 3339 start (default: now minus --hours, on the minute).")
def simulate(users: int, hours: float, seed: int, malformed_share: float, start: str | None) -> None:
    """Produce a simulated city's pings, connection logs and consent changes to Kafka."""
    counts = _simulate(_settings(), users, hours, seed, malformed_share, start)
    click.echo("produced: " + ", ".join(f"{n} {t}" for t, n in counts.items()))


def _simulate(settings: Settings, users: int, hours: float, seed: int, malformed_share: float,
              start: str | None) -> dict[str, int]:
    from tqdm import tqdm

    from streams.clients import producer as kafka_producer

    from schemas.timefmt import parse_ts
    from streams.tools.simulator import SimulationParams, simulate_city

    t0 = parse_ts(start) if start else (int(time.time()) // 60) * 60 - hours * 3600
    params = SimulationParams(users=users, hours=hours, seed=seed, malformed_share=malformed_share, start=t0)
    producer = kafka_producer(settings, client_id="crosspaths-simulator", linger_ms=20, batch_size=256 * 1024)
    counts: dict[str, int] = {}
    with tqdm(desc="producing", unit=" msg", mininterval=1.0, file=sys.stderr) as bar:
        for topic, key, value in simulate_city(params):
            producer.send(settings.topic(topic), key=key, value=value)
            counts[topic] = counts.get(topic, 0) + 1
            bar.update()
    producer.flush()
    producer.close()
    return counts


# --------------------------------------------------------------------------- stats
@main.group()
def stats() -> None:
    """Counters and published statistics."""


@stats.command("counters")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats_counters(as_json: bool) -> None:
    """Ingest counters per input topic (all workers), and whether they reconcile."""
    from streams.tools.report import format_counters, read_counters

    counters = read_counters(_settings())
    if as_json:
        click.echo(json.dumps({t: vars(c) | {"reconciles": c.reconciles} for t, c in counters.topics.items()}))
    else:
        click.echo(format_counters(counters))


@stats.command("dead-letters")
def stats_dead_letters() -> None:
    """Dead letters per source topic and reason."""
    from streams.tools.report import dead_letter_reasons

    for (topic, reason), n in sorted(dead_letter_reasons(_settings()).items()):
        click.echo(f"{topic:<18} {reason:<24} {n}")


@stats.command("export")
@click.option("--topic", type=click.Choice(["partner-statistics", "connection-statistics"]), required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="File (default: stdout for csv).")
@click.option("--since", default=None, help="Only windows starting at or after this RFC 3339 time.")
@click.option("--until", default=None, help="Only windows starting before this RFC 3339 time.")
def stats_export(topic: str, fmt: str, output: Path | None, since: str | None, until: str | None) -> None:
    """Export published statistics for pandas (one row per window and region or group).

    A partner-statistics region's member H3 cells are a list in parquet, space-separated in CSV.
    """
    import pandas as pd

    from streams.tools.report import read_statistics

    frame = read_statistics(_settings(), topic)
    if not frame.empty:
        if since:
            frame = frame[frame["window_start"] >= pd.Timestamp(since)]
        if until:
            frame = frame[frame["window_start"] < pd.Timestamp(until)]
        if "group" in frame.columns:
            for i, name in enumerate(frame["group_by"].iloc[0]):
                frame[name] = frame["group"].str[i]
            frame = frame.drop(columns=["group", "group_by"])
        if "members" in frame.columns and fmt == "csv":
            frame["members"] = frame["members"].str.join(" ")  # a region's H3 cells, space-separated
    if fmt == "parquet":
        if output is None:
            _fail("--output is required for parquet")
        frame.to_parquet(output, index=False)
    elif output is None:
        click.echo(frame.to_csv(index=False), nl=False)
    else:
        frame.to_csv(output, index=False)
    if output is not None:
        click.echo(f"wrote {len(frame)} rows to {output}", err=True)


@stats.command("map")
@click.option("--window", "window", default=None, help="Window start (RFC 3339); default: the latest.")
@click.option("--day", default=None, help="A UTC date (YYYY-MM-DD): every window of that day, as small multiples.")
@click.option("--output", type=click.Path(path_type=Path), default=Path("partner-statistics.png"), show_default=True)
def stats_map(window: str | None, day: str | None, output: Path) -> None:
    """Render a PNG map of one window's published partner-statistics regions, or of a whole day's windows."""
    import pandas as pd

    from streams.tools.maps import render_cells, render_day
    from streams.tools.report import read_statistics

    if window and day:
        raise click.UsageError("--window and --day are exclusive")
    frame = read_statistics(_settings(), "partner-statistics")
    if frame.empty:
        _fail("no partner statistics published yet")
    if day:
        try:
            start = pd.Timestamp(day, tz="UTC").normalize()
        except ValueError:
            raise click.UsageError(f"--day={day!r} is not a date (YYYY-MM-DD)") from None
        sub = frame[(frame["window_start"] >= start) & (frame["window_start"] < start + pd.Timedelta(days=1))]
        if sub.empty:
            days = sorted(frame["window_start"].dt.strftime("%Y-%m-%d").unique())
            _fail(f"no windows on {start:%Y-%m-%d}; days with windows: {days}")
        click.echo(render_day(sub, output, f"Partner statistics, {start:%Y-%m-%d} (UTC)"))
        return
    ws = pd.Timestamp(window) if window else frame["window_start"].max()
    sub = frame[frame["window_start"] == ws]
    if sub.empty:
        _fail(f"no regions for window {ws}; windows: {sorted(frame['window_start'].astype(str).unique())}")
    click.echo(render_cells(sub, output, f"Partner statistics, window {ws:%Y-%m-%d %H:%M} UTC"))


# --------------------------------------------------------------------------- crossings
@main.group()
def crossings() -> None:
    """Space-time crossings between users."""


@crossings.command("show")
@click.argument("user_id")
def crossings_show(user_id: str) -> None:
    """A user's current crossings, as the crossing-profile feature shows them (latest record per key, tombstones applied)."""
    from streams.tools.report import current_crossings, read_crossings

    shown = current_crossings(read_crossings(_settings())).get(user_id, {})
    if not shown:
        click.echo(f"{user_id} has no crossings to show")
        return
    for other, rec in sorted(shown.items(), key=lambda kv: kv[1]["ts"]):
        click.echo(f"{rec['ts']}  {other:<20} H3 {rec['place']}  {rec['distance_band']}")


@crossings.command("verify")
@click.option("--quiet", is_flag=True, help="No progress bar (there is none either when stderr is not a terminal).")
def crossings_verify(quiet: bool) -> None:
    """Recompute the run's crossing pairs with the batch detector and compare; exit 1 if they differ.

    Reads crossing-cells (the pings the worker accepted for crossings) and crossings from the start,
    so it checks what those topics still retain.
    """
    from streams.tools.offline import ProgressBars
    from streams.tools.report import check_crossings, format_crossing_check

    started = time.perf_counter()
    with ProgressBars(quiet=quiet) as bars:
        check = check_crossings(_settings(), progress=bars)
    click.echo(format_crossing_check(check) + f"  ({time.perf_counter() - started:.1f} s)")
    sys.exit(0 if check.identical else 1)


@crossings.command("detect")
@click.option("--input", "input_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Pings as .csv or .parquet with columns user_id, ts, lat, lon[, accuracy_m].")
@click.option("--output", type=click.Path(path_type=Path), required=True,
              help="Crossings file: Parquet if the name ends in .parquet, else CSV (ts as RFC 3339 UTC text in both).")
@click.option("--rejects", "rejects_path", type=click.Path(path_type=Path), default=None,
              help="CSV of the rows the stream would refuse: row (1 = first data row), field, value, reason, "
                   "message. Default: <output stem>.rejects.csv beside the output.")
@click.option("--distance-m", type=float, default=None, help="D (default from settings: 250).")
@click.option("--window-s", type=float, default=None, help="T (default from settings: 300).")
@click.option("--zones", type=click.Path(exists=True, path_type=Path), default=None, help="Sensitive zones GeoJSON.")
@click.option("--chunk-s", type=click.FloatRange(min=0, min_open=True), default=3600.0, show_default=True,
              help="Search the pings in time chunks of this many seconds (rounded up to whole crowd slices of T): memory "
                   "holds one chunk's matches; the output is the same for any chunk.")
@click.option("--quiet", is_flag=True, help="No progress bar (there is none either when stderr is not a terminal).")
def crossings_detect(input_path: Path, output: Path, rejects_path: Path | None, distance_m: float | None,
                     window_s: float | None, zones: Path | None, chunk_s: float, quiet: bool) -> None:
    """Run the crossing detector on a file (backfills, audits): one output row per reported crossing.

    Each row is checked as the stream checks a ping; refused rows go to the rejects file, the others
    are processed.
    """
    from geo.zones import SensitiveZones
    from streams.tools.offline import ProgressBars, UnusableFile, detect_crossings_file

    s = _settings()
    overrides = {}
    if distance_m is not None:
        # Partition cells are the stream's; offline, a D above their default side is no contradiction.
        overrides.update(distance_m=distance_m, partition_cell_m=max(s.crossing_params().partition_cell_m, distance_m))
    if window_s is not None:
        overrides.update(window_s=window_s)
    try:
        params = s.crossing_params(**overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    zone_path = s.zones_path if zones is None else zones
    try:
        zone_set = None if zone_path is None else SensitiveZones.from_geojson(zone_path)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"zones {zone_path}: {exc}") from None
    started = time.perf_counter()
    try:
        with ProgressBars(quiet) as bars:
            run = detect_crossings_file(input_path, output, params, zone_set, rejects_path, progress=bars, chunk_s=chunk_s)
    except (UnusableFile, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{run.summary(output)} in {time.perf_counter() - started:.1f} s")


# --------------------------------------------------------------------------- audit
@main.group()
def audit() -> None:
    """Answer access and erasure requests."""


@audit.command("user")
@click.argument("user_id")
@click.option("--worker", "workers", multiple=True, help="A worker's web URL (e.g. http://127.0.0.1:6066), "
              "to also check its memory; repeat for each worker.")
@click.option("--export", "export_path", type=click.Path(path_type=Path), default=None,
              help="Also write everything the pipeline holds about the user to this JSON file (access request).")
def audit_user_cmd(user_id: str, workers: tuple[str, ...], export_path: Path | None) -> None:
    """Find every trace of USER_ID in topics, table changelogs and workers; exit 0 when state holds none."""
    from streams.tools.audit import audit_user, export_user, format_report

    if export_path is not None:
        doc = export_user(_settings(), user_id)
        export_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        click.echo(f"access export: {len(doc['geo_pings'])} pings, {len(doc['connection_logs'])} connection logs, "
                   f"{len(doc['crossings_shown'])} crossings shown, consent "
                   f"{'on record' if doc['consent'] else 'never recorded'} -> {export_path}")
    report = audit_user(_settings(), user_id, workers)
    click.echo(format_report(report))
    sys.exit(0 if report.clean else 1)


# --------------------------------------------------------------------------- schemas
@main.group()
def schemas() -> None:
    """The published JSON Schemas of the input records."""


@schemas.command("export")
@click.option("--check", is_flag=True, help="Exit 1 if a file differs from the code instead of writing.")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None)
def schemas_export(check: bool, directory: Path | None) -> None:
    """Write schemas/<record>.schema.json from the code (or check they match)."""
    from schemas.events import INPUT_MODELS, schema_text

    folder = directory or Path(__file__).resolve().parent.parent / "schemas"
    stale = []
    for kind in INPUT_MODELS:
        path = folder / f"{kind}.schema.json"
        text = schema_text(kind)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            click.echo(f"wrote {path}")
    if stale:
        _fail(f"out of date: {', '.join(stale)}; run `crosspaths schemas export`")


# --------------------------------------------------------------------------- demo
@main.command()
@click.option("--users", default=1500, show_default=True)
@click.option("--hours", default=2.0, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for the worker.")
def demo(users: int, hours: float, seed: int, timeout: float) -> None:
    """The main job: broker, topics, worker, a simulated city, then a summary of what came out."""
    from streams.tools import broker as b
    from streams.tools.demo import run_demo

    settings = _settings()
    try:
        if settings.bootstrap_servers == f"127.0.0.1:{settings.broker_port}":
            click.echo(b.start(settings))
        run_demo(settings, users=users, hours=hours, seed=seed, timeout_s=timeout, simulate=_simulate)
    except b.BrokerError as exc:
        _fail(str(exc))


# --------------------------------------------------------------------------- scenario
@main.group()
def scenario() -> None:
    """Fault scenarios, each compared record by record with a fault-free run (bench/scenarios.py)."""


@scenario.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name")
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def scenario_run(name: str, options: tuple[str, ...]) -> None:
    """Run scenario NAME (or all) on a broker of its own; OPTIONS as `bench/scenarios.py --help`."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "bench" / "scenarios.py"
    if not script.exists():
        _fail(f"{script} is not here: the scenario runner comes with a checkout of the repository")
    sys.exit(subprocess.call([sys.executable, str(script), name, *options]))


if __name__ == "__main__":  # pragma: no cover
    main()
