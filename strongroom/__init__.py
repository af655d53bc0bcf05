"""Composition root: settings, FastAPI app factory, CLI and the embedded-storage launcher."""

__version__ = "0.1.0"
