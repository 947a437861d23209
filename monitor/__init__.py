"""Schoolwatch daemon core: config, store, pipeline, routing, scheduler, CLI."""

__version__ = "0.1.0"
