"""Conveyor: durable, multi-stage AI pipelines for media."""

__version__ = "0.1.0"
