"""Chat front ends (Discord, Telegram) over the engine's job service. Knows nothing about diffusion."""
