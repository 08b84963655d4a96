"""The LLM in the bot: per-tenant wiring of :mod:`llm` (paraphrased replies, slot fallback, token budgets),
the usage table and budget alerts. ``bot.pipeline`` and the dialog engine call in through
:class:`bot.assist.wiring.Assistant`; nothing here runs on the webhook path."""
