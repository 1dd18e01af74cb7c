"""Rendering: the only package that imports torch, diffusers or transformers.

Model loading (hub id, folder, tiny), our sampling loop, sizing and the out-of-memory fall-back, and the fast
path. Everything else in the engine and the bot imports without torch (tests/test_layers.py proves it).
"""
