"""GPU memory facts the worker needs: is this an out-of-memory error, hand memory back, the peak of a job."""

from __future__ import annotations

import gc

import torch

# torch.cuda.OutOfMemoryError is an alias of torch.OutOfMemoryError in recent torch; older ones have only it.
OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    cls for cls in {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)}
    if cls is not None)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, OOM_ERRORS)


def simulated_oom() -> BaseException:
    """A real torch out-of-memory error, for the `simulate_oom_at_step` test knob."""
    return torch.OutOfMemoryError("CUDA out of memory (simulated)")


def free_memory() -> None:
    """Hand GPU memory back after a job or a failed attempt. A full gc costs ~0.2 s, so only where there is a
    GPU to free."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def gpu_peak_bytes() -> int:
    """The peak GPU memory since the last call (0 without a GPU)."""
    if not torch.cuda.is_available():
        return 0
    peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    return int(peak)
