"""The Telegram front end (python-telegram-bot): handlers, callbacks, status messages, Bot API helpers."""
