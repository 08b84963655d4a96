"""Composition root: settings, wiring, storage, booking backends, the pipeline, server, worker and CLI."""
