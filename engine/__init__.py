"""Render engine and job queue: turns an image and a prompt into a short MP4. Knows nothing about chat."""

import os

# transformers logs library notices (e.g. a torchvision fallback) on import: keep users' stderr for our lines.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
