"""The worker's stages, one module each, in the order data flows through them.

ingest -> detection -> pairs (crossings) | statistics; erasure (purges, inactivity, receipts).
Each reads top to bottom: what it consumes, what it asks the core, what it emits.
"""
