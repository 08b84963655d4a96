"""The engine's behaviour, one module per flow (see :mod:`dialogs.flows.base`)."""
