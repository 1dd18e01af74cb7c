"""A small run of scripts/load_test.py: simulated users on both fake platforms at once, a real worker process.
The full run (100 users, 500 jobs) and its timing figures are a script; this checks that nothing is lost."""

import gc
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture
def load_test(monkeypatch):
    # On the path, so that the process it spawns for the fakes can import it too.
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import load_test

    yield load_test
    gc.unfreeze()   # the run freezes the heap as the bot does; the rest of the suite should not inherit that
    sys.modules.pop("load_test", None)


@pytest.mark.timeout(300)
async def test_every_job_of_a_burst_ends_once_and_its_user_hears_once(load_test):
    r = await load_test.run(users=12, jobs_per_user=3, timeout_s=200)
    assert r["jobs_stored"] == 36 and r["states"] == {"done": 36}
    assert r["all_final_and_delivered"]
    assert r["discord_results_per_job"] == [1] and r["telegram_results_per_job"] == [1]
    assert r["edits"] > 0 and r["max_stall_ms"] > 0
