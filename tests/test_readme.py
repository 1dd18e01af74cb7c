"""The README's two quick-start commands stay true: CI runs the test command, Docker the install line."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```sh\n")[1:]
    return [b.split("\n```", 1)[0].strip() for b in blocks]


def test_ci_runs_the_readme_test_command():
    bot_cmd, test_cmd = quick_start_commands()[:2]
    assert "pytest" in test_cmd and "-m bot" in bot_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_dockerfile_installs_like_the_readme():
    bot_cmd = quick_start_commands()[0]
    install = bot_cmd.rsplit(" && ", 1)[0]
    assert f"RUN {install}" in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_bot_without_a_token_exits_2_naming_the_variables(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_TOKEN", "TELEGRAM_TOKEN"))}
    out = subprocess.run([sys.executable, "-m", "bot", "--config", str(ROOT / "config.toml")], cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "DISCORD_TOKEN" in lines[0] and "TELEGRAM_TOKEN" in lines[0]
