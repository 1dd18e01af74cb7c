"""Media helpers shared by the CLI, the worker and the bots: input validation, MP4 encode and fit, image detail."""
