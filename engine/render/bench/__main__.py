"""`python -m engine.render.bench child SPEC_JSON`: one fresh-process measurement, run by `run_bench`."""

import sys

from engine.render.bench.fast_path import child_entry

sys.exit(child_entry(sys.argv[1:]))
