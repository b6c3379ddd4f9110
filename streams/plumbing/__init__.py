"""Kafka plumbing of the worker: batch delivery, sending, partitioning, dead letters, counters, tables.

No domain decision lives here: these modules move bytes and keep Faust's bookkeeping right.
"""
