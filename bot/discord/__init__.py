"""The Discord front end (discord.py): app commands, components, status messages."""
