"""The Faust app, and every topic and table of the worker, declared once.

Stages (streams/stages/) import what they consume and emit from here; this module holds no
logic and no state of its own. Data flow (docs/ARCHITECTURE.md has the whole picture):

  geo-pings, connection-logs, consents -> stages.ingest
      -> crossing-cells (by spatial cell) -> stages.detection -> crossing-pairs (by pair)
      -> stages.pairs -> crossings (one record per participant)
      -> stats-cells (by coarse H3 cell) / stats-connections -> stages.statistics
      -> partner-statistics / connection-statistics
  consents (deletion) / inactivity -> stages.erasure: purges to every stage -> erasure-reports
      -> erasure-receipts
"""
from __future__ import annotations

from pathlib import Path

import faust

from streams.clients import client_auth
from streams.plumbing import producer
from streams.plumbing.tallies import tallies
from streams.settings import get_settings

settings = get_settings()
P = settings.partitions

app = faust.App(  # store="memory://" is relied on by streams.plumbing.tables.peek
    settings.app_id,
    broker=settings.broker_url,
    broker_credentials=client_auth(settings).faust_credentials(),  # None: plaintext (streams/clients.py)
    store="memory://",
    datadir=str(Path(settings.home).expanduser() / "faust" / "{conf.name}"),  # created by `crosspaths worker`
    topic_partitions=P,
    topic_replication_factor=settings.replication_factor,
    topic_allow_declare=True,
    consumer_auto_offset_reset="earliest",
    table_standby_replicas=settings.table_standby_replicas,
    web_host="127.0.0.1",
    web_port=settings.web_port,
    web_in_thread=False,
    producer_acks=-1,  # acks=all; idempotent too: streams.plumbing.producer
    producer_linger_ms=10,  # internal batches are large already; each hop waits this long at most
    producer_max_batch_size=512 * 1024,
    stream_buffer_maxsize=16384,
    broker_commit_every=1_000_000,  # commit on the 1 s timer (its own task), not inline: a commit waits for a producer flush
    broker_commit_interval=1.0,
    stream_wait_empty=False,
)
producer.install(app)
tallies(app).window_topics = frozenset({settings.topic("partner-statistics"), settings.topic("connection-statistics")})


def _topic(name: str, internal: bool = False) -> faust.TopicT:
    return app.topic(settings.topic(name), key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=P, internal=internal)


def _table(name: str) -> faust.TableT:
    # Co-partitioned with the topic whose records write it (same partition count).
    return app.Table(name, default=None, partitions=P, key_type=str)


# Inputs, from the mobile backends
geo_pings = _topic("geo-pings")
connection_logs = _topic("connection-logs")
consents = _topic("consents")

# Outputs
crossings = _topic("crossings")
partner_statistics = _topic("partner-statistics")
connection_statistics = _topic("connection-statistics")
dead_letters = _topic("dead-letters")
erasure_receipts = _topic("erasure-receipts")
inactivity_notices = _topic("inactivity-notices")

# Between stages
crossing_cells = _topic("crossing-cells", internal=True)  # routed pings, by spatial cell
crossing_pairs = _topic("crossing-pairs", internal=True)  # candidate crossings, by pair
stats_cells = _topic("stats-cells", internal=True)  # partner-sharing pings, by coarse H3 cell
stats_connections = _topic("stats-connections", internal=True)  # reduced connection logs, one key
erasure_reports = _topic("erasure-reports", internal=True)  # what each stage partition purged, by user

# Tables (each a changelogged Kafka topic)
consent_table = _table("consent-state")  # user -> current consent
counter_table = _table("counters")  # "topic/partition" -> counts by outcome
activity_table = _table("activity")  # user -> last login, inactivity notice
erased_table = _table("erased")  # erasure tag (keyed hash, never the user id) -> erased at
pair_table = _table("pair-last")  # "p|pair key" -> [last reported ts, reported at]
guard_table = _table("pair-guard")  # "p|erasure tag" -> [consent version withdrawn, set at]
location_members = _table("location-members")  # "p|window|cell|pseudonym" -> 1
location_published = _table("location-published")  # "p|window" -> True
connection_members = _table("connection-members")
connection_published = _table("connection-published")
resume_table = _table("detector-resume")  # crossing-cells partition -> resume points (offsets only)
receipt_table = _table("receipt-drafts")  # "draft|tag" -> erasure receipt draft; "done|tag" -> erasure time
dp_bound_table = _table("dp-bound")  # "p|window|pseudonym" -> cells a user counts in (DP contribution bound)


def changelog_topic_name(table: str) -> str:
    """Name of the Kafka changelog topic behind one of the tables above."""
    return f"{settings.app_id}-{table}-changelog"
