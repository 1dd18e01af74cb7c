"""Render engine and job queue: turns an image and a prompt into a short MP4. Knows nothing about chat."""
