"""LLM provider, paraphraser, token quotas and speech-to-text. Never imports ``bot``, ``dialogs`` or ``channels``."""
