"""Slot-filling dialogs: YAML templates, extractors, sessions and the engine's ``step()``.

This package never imports ``bot``, ``channels`` or ``llm``: it talks to the outside world through the
value objects in :mod:`dialogs.model` and the ports in :mod:`dialogs.ports`.
"""
