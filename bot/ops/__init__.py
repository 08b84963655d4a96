"""Operator commands on the worker: its health check and the messages it gave up on."""
