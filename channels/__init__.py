"""Channel adapters (Telegram, WhatsApp, VK, web, terminal). Never imports ``bot``, ``dialogs`` or ``llm``."""
