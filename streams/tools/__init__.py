"""The operator's tools: local broker, simulator, demo, reports and maps, audits, offline detection.

They stand apart from the worker's stages: none of them is imported by the worker.
"""
