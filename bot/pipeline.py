"""One inbound message through the dialog: the work half of DESIGN section 2 (the worker runs this).

load session -> engine.step -> effects (and the engine's reaction to their outcomes) -> save the session and the
turn's replies in one step -> message log. The caller owns ordering (the inbox lease) and delivery of the
returned replies; a message already answered (a redriven inbox head) comes back as a duplicate turn carrying the
replies stored for it, so the caller can finish sending them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pydantic import TypeAdapter

from bot import effects, keys
from bot.messagelog import LoggedMessage
from bot.runtime import Runtime, Tenant
from bot.voice import MediaFetch
from channels.base import InboundMessage, OutboundMessage, OutButton
from dialogs.model import Reply, StepResult, UserInput
from dialogs.session import Session

REPLIES = TypeAdapter(list[OutboundMessage])


@dataclass
class Turn:
    """What one inbound message produced."""

    session: Session
    replies: list[Reply] = field(default_factory=list)
    duplicate: bool = False  # the message was already processed (a redriven inbox head)
    outbound: list[OutboundMessage] = field(default_factory=list)  # the replies as sent (stored with the session)


def _outbound(msg: InboundMessage, replies: list[Reply]) -> list[OutboundMessage]:
    return [
        OutboundMessage(
            tenant=msg.tenant,
            channel=msg.channel,
            user_id=msg.user_id,
            chat_id=msg.chat_id,
            text=reply.text,
            buttons=tuple(OutButton(label=b.label, data=b.value) for b in reply.buttons),
            event_id=msg.event_id,
            index=index,
        )
        for index, reply in enumerate(replies)
    ]


class Pipeline:
    def __init__(self, runtime: Runtime, media: MediaFetch | None = None) -> None:
        self.rt = runtime
        self.media = media  # where voice notes' audio comes from (None: voice notes are not transcribed)

    async def handle(self, msg: InboundMessage, now: datetime) -> Turn:
        tenant = self.rt.tenant(msg.tenant)
        session = await self.rt.sessions.load(msg.tenant, msg.conversation)
        if session is None:
            session = tenant.engine.new_session(msg.conversation, customer=msg.conversation)
        elif session.last_event == msg.event_id:
            return await self._answered(msg, session, now)
        pressed = next((b.label for b in session.offered if msg.button and b.value == msg.button), None)
        if msg.voice is not None:  # speech-to-text: the transcript then goes on exactly like typed text
            user_input = await self.rt.voice.hear(msg, tenant, self.media)
        else:
            user_input = UserInput(text=msg.text, button=msg.button, phone=msg.phone)
        turn = Turn(session, replies=self.rt.voice.echo(tenant, user_input))
        await self._apply(turn, tenant, await tenant.engine.step(session, user_input, now, tenant.calendar), now)
        if tenant.assistant is not None:  # paraphrased before the save, so a redriven turn resends the same words
            turn.replies = await tenant.assistant.paraphrase(session, turn.replies)
        session.last_event = msg.event_id
        turn.outbound = _outbound(msg, turn.replies)
        await self.rt.sessions.save(session, REPLIES.dump_json(turn.outbound).decode() if turn.outbound else "")
        self._log(msg, turn, now, pressed or user_input.text)
        await effects.mirror(tenant, msg.conversation, pressed or user_input.text, [r.text for r in turn.outbound])
        return turn

    async def _answered(self, msg: InboundMessage, session: Session, now: datetime) -> Turn:
        """The turn of a message this session already answered, with the replies stored with it. Its log rows
        are added again: a process that died after the turn was saved may not have written them (rows have
        natural keys, so rows already written stay single)."""
        stored = await self.rt.redis.get(keys.replies(msg.tenant, msg.conversation, msg.event_id))
        turn = Turn(session, duplicate=True, outbound=[] if stored is None else REPLIES.validate_json(stored))
        self._log(msg, turn, now, msg.text)
        return turn

    async def _apply(self, turn: Turn, tenant: Tenant, result: StepResult, now: datetime) -> None:
        """Collect replies, running effects; an effect's outcome may make the engine say more (and act again)."""
        turn.replies.extend(result.replies)
        for effect in result.effects:
            outcome = await effects.execute(effect, tenant, turn.session, self.rt.log)
            if outcome is not None:
                reaction = await tenant.engine.resolve(turn.session, outcome, now, tenant.calendar)
                await self._apply(turn, tenant, reaction, now)

    def _log(self, msg: InboundMessage, turn: Turn, now: datetime, text: str) -> None:
        """Log the inbound message and the replies, each with the dialog state after the turn (for export).

        A pressed button is logged with its label as the text, so an exported fixture can ``press:`` it; a
        voice note with its transcript as the text and its media reference as ``voice``.
        """
        inbound = LoggedMessage(
            tenant=msg.tenant,
            conversation=msg.conversation,
            channel=msg.channel,
            direction="in",
            at=now,
            text=text,
            button=msg.button,
            voice=msg.voice.id if msg.voice else None,
            phone=msg.phone,
            state=turn.session.state,
            event_id=msg.event_id,
        )
        self.rt.log.add(inbound)
        for seq, reply in enumerate(turn.outbound, start=1):
            self.rt.log.add(
                inbound.model_copy(
                    update={"direction": "out", "text": reply.text, "button": None, "voice": None, "phone": None}
                    | {"seq": seq}
                )
            )
