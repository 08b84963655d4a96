"""A conversation handed off to a person: the bot steps back (it only says that a person will reply) until
staff resume it (``bookingbot handoff resume``, which resets the state) or the customer has been quiet for the
tenant's quiet period, after which the bot answers again."""

from __future__ import annotations

from datetime import datetime, timedelta

from dialogs.flows.base import Turn
from dialogs.flows.info import InfoFlow


class HandoffFlow(InfoFlow):
    def _waiting(self, turn: Turn) -> bool:
        """In a handoff: answer "a person will reply" and return True; after the quiet period resume the bot
        (return False: the message is handled as usual)."""
        s = turn.session
        if self._state(turn).kind != "waiting":
            return False
        quiet = timedelta(minutes=self.profile.handoff_quiet_minutes)
        if s.handoff_at is None or turn.ctx.now - datetime.fromisoformat(s.handoff_at) >= quiet:
            s.handoff_at = None
            self._go(turn, "resume")
            return False
        s.handoff_at = turn.ctx.now.isoformat()  # the customer is still talking to the person
        self._say(turn, self._reply(self._reachable("handoff_wait"), self._facts(turn)))
        return True
