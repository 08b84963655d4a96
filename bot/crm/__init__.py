"""The CRM (erxes): customers, bookings, handoffs and the chat mirror, written through a SQL outbox.

One owner per concern: :mod:`bot.crm.erxes` speaks erxes's GraphQL (both profiles, one error mapper);
:mod:`bot.crm.outbox` is the table; :mod:`bot.crm.recorder` turns our events into rows (inside the caller's
transaction); :mod:`bot.crm.sync` applies one row to erxes; :mod:`bot.crm.relay` delivers rows in order.
"""
