"""Pure crossing-detection core: distances, sensitive zones, batch and streaming detectors (no Kafka here)."""
