"""One validated config, refused the way a user meets it: the real `python -m engine` and `python -m bot`, exit 2
and one line naming `section.key`; the environment beats the file, and flags beat the environment."""

import subprocess
import sys
from pathlib import Path

import pytest

from bot.__main__ import wants_local_worker
from engine.config import load_config, parse_config
from engine.errors import UserError
from tests.harness import write_config

ROOT = Path(__file__).resolve().parent.parent
BASE_ENV = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run(module: str, *args, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**BASE_ENV, **(env or {})})


def refusal(out: subprocess.CompletedProcess) -> str:
    """The one line a refused start prints; fails on a traceback or a second line."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


@pytest.fixture
def store_cfg(tmp_path):
    return {"storage": {"url": str(tmp_path / "jobs.sqlite3"), "data_dir": str(tmp_path / "data")}}


@pytest.mark.parametrize("module, args", [("engine", ["jobs"]), ("bot", [])])
def test_an_unknown_key_names_the_key_and_the_nearest_one(tmp_path, store_cfg, module, args):
    cfg = write_config(tmp_path / "config.toml", {**store_cfg, "queue": {"per_usr": 3}})
    line = refusal(run(module, *args, "--config", cfg))
    assert line == f"error: {cfg}: queue.per_usr: unknown key (did you mean per_user?)"


@pytest.mark.parametrize("module, args", [("engine", ["jobs"]), ("bot", [])])
def test_an_unknown_section_is_refused(tmp_path, store_cfg, module, args):
    cfg = write_config(tmp_path / "config.toml", {**store_cfg, "queu": {"per_user": 3}})
    assert refusal(run(module, *args, "--config", cfg)) == f"error: {cfg}: [queu]: unknown section (did you mean queue?)"


@pytest.mark.parametrize("module, args", [("engine", ["jobs"]), ("bot", [])])
def test_a_wrong_type_or_range_names_the_value_and_what_is_expected(tmp_path, store_cfg, module, args):
    cfg = write_config(tmp_path / "config.toml", {**store_cfg, "queue": {"per_user": "lots"}})
    line = refusal(run(module, *args, "--config", cfg))
    assert f"{cfg}: queue.per_user: 'lots' is not valid" in line and "integer" in line
    cfg = write_config(tmp_path / "config.toml", {**store_cfg, "telegram": {"send_as": "gif"}})
    line = refusal(run(module, *args, "--config", cfg))
    assert "telegram.send_as: 'gif' is not valid" in line and "'video' or 'animation'" in line
    cfg = write_config(tmp_path / "config.toml", {**store_cfg, "metrics": {"port": 70000}})
    assert "metrics.port: 70000 is not valid" in refusal(run(module, *args, "--config", cfg))


@pytest.mark.parametrize("module, args", [("engine", ["jobs"]), ("bot", [])])
def test_a_bad_environment_value_names_the_variable(tmp_path, store_cfg, module, args):
    cfg = write_config(tmp_path / "config.toml", store_cfg)
    line = refusal(run(module, *args, "--config", cfg, env={"ANIMABOT_QUEUE__PER_USER": "many"}))
    assert line.startswith("error: ANIMABOT_QUEUE__PER_USER: queue.per_user: 'many' is not valid")
    line = refusal(run(module, *args, "--config", cfg, env={"ANIMABOT_QUEUE__PER_USR": "3"}))
    assert line == "error: ANIMABOT_QUEUE__PER_USR: queue.per_usr: unknown key (did you mean per_user?)"
    line = refusal(run(module, *args, "--config", cfg, env={"ANIMABOT_QEUE__PER_USER": "3"}))
    assert line.startswith("error: ANIMABOT_QEUE__PER_USER: unknown section 'qeue' (did you mean queue?)")


def test_the_environment_beats_the_file_and_a_flag_beats_the_environment(tmp_path, store_cfg):
    from tests.tiny_model import make_photo

    photo = tmp_path / "photo.jpg"
    make_photo(96, 96).save(photo)
    cfg = write_config(tmp_path / "config.toml", {**store_cfg, "engine": {"model": "tiny"}})
    env_store, flag_store = tmp_path / "env.sqlite3", tmp_path / "flag.sqlite3"
    env = {"ANIMABOT_STORAGE__URL": str(env_store)}
    submitted = run("engine", "submit", photo, "--prompt", "a cat", "--user", "u", "--config", cfg, env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert env_store.exists() and not Path(store_cfg["storage"]["url"]).exists()
    listed = run("engine", "jobs", "--config", cfg, env=env)
    assert listed.stdout.split()[0] == job_id
    flagged = run("engine", "jobs", "--config", cfg, "--store", flag_store, env=env)
    assert flagged.returncode == 0 and flagged.stdout == ""   # the flag's store, not the environment's
    assert flag_store.exists()


def test_every_key_of_the_shipped_config_is_known_and_settable_from_the_environment():
    shipped = load_config(ROOT / "config.toml", env={})
    assert shipped.presets["quick"].steps == 30 and shipped.engine.compile == "auto"
    env = {"ANIMABOT_STORAGE__URL": "redis://redis:6379/0", "ANIMABOT_ENGINE__COMPILE_MODE": "default",
           "ANIMABOT_PRESETS__QUICK__STEPS": "12", "ANIMABOT_DISCORD__GUILDS": "[1, 2]",
           "ANIMABOT_ENGINE__LOCAL_WORKER": "false", "ANIMABOT_DISCORD__INTERACTION_TTL_S": "600"}
    config = load_config(ROOT / "config.toml", env=env)
    assert (config.storage.url, config.engine.compile_mode, config.presets["quick"].steps) == (
        "redis://redis:6379/0", "default", 12)
    assert config.presets["quick"].frames == 16   # the rest of the table is the file's
    assert config.discord.guilds == [1, 2] and config.discord.interaction_ttl_s == 600
    assert not wants_local_worker(config)


def test_presets_are_completed_from_the_built_in_ones_and_checked():
    config = parse_config({"presets": {"quick": {"steps": 4}, "tiny": {"pixels": 4096, "frames": 2}}}, env={})
    assert (config.presets["quick"].steps, config.presets["quick"].fallback) == (4, "lite")
    assert config.presets["tiny"].frames == 2 and config.presets["tiny"].steps == 30
    with pytest.raises(UserError, match=r"presets.quick.fallback: no preset named 'gone'"):
        parse_config({"presets": {"quick": {"fallback": "gone"}}}, env={})
    with pytest.raises(UserError, match=r"presets.hq.stepz: unknown key \(did you mean steps\?\)"):
        parse_config({"presets": {"hq": {"stepz": 4}}}, env={})


def test_a_local_worker_runs_unless_the_store_is_redis_and_it_is_turned_off():
    assert wants_local_worker(parse_config({"engine": {"local_worker": False}}, env={}))   # SQLite: one machine
    assert wants_local_worker(parse_config({"storage": {"url": "redis://r/0"}}, env={}))
    redis_only = {"storage": {"url": "redis://r/0"}, "engine": {"local_worker": False}}
    assert not wants_local_worker(parse_config(redis_only, env={}))
