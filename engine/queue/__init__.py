"""The job system: the store protocol and its shared rules, SQLite and Redis backends, the service front ends
use, the worker process, ETAs and metrics. Knows nothing about torch: the worker reaches the render package
only inside its own process, through lazy imports."""
