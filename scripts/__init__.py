"""Bench, load and GPU-check scripts; run them from the repository root (see docs/PERFORMANCE.md)."""
