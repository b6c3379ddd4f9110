"""The worker: the app with every stage and page registered, and what runs once at start.

`crosspaths worker` runs this module's app; importing it registers the agents (and nothing else:
folders, the pseudonym secret and the zones are made or read when the worker starts).
"""
from __future__ import annotations

import gc
import logging
from pathlib import Path

import faust

from anonymizers.useragent import reduce_user_agent
from streams import web  # noqa: F401  (pages)
from streams.app import app, settings
from streams.rules import partner_statistics_statement, rules
from streams.stages import detection, erasure, ingest, pairs, statistics  # noqa: F401  (agents, timers)

__all__ = ("app", "run")


@app.task
async def quiet_logs() -> None:
    """Library loggers at WARNING: their per-message debug records cost a tenth of the CPU."""
    for name in ("faust", "aiokafka", "mode", "kafka"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.task
async def warm_up() -> None:
    """Build the user-agent parser now (~0.3 s) rather than on the first connection log, then freeze.

    gc.freeze(): the ~10^5 objects of the loaded libraries live as long as the worker, and every
    full collection of Python's cycle collector walked them again (70-270 ms pauses measured).
    """
    reduce_user_agent("Mozilla/5.0")
    gc.collect()
    gc.freeze()


def run(loglevel: str = "warn") -> None:
    """Start the worker (blocks): its data folder, its rules, then Faust."""
    (Path(settings.home).expanduser() / "faust").mkdir(parents=True, exist_ok=True)
    r = rules()  # the pseudonym secret, zones and DP area now, so that a bad setting stops the start, not a stage
    print(partner_statistics_statement(r), flush=True)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
