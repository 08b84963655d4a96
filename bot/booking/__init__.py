"""Booking backends: one interface (:mod:`bot.booking.base`), one module per backend."""
