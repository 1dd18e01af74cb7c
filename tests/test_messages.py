"""One text store: every user-facing text is in templates/messages, in English and Chinese, under the same keys."""

import re
import string
import tomllib
from pathlib import Path

import pytest

from bot.texts import t

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ROOT / "templates" / "messages"
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
TEXT_KEY = re.compile(r"""\bt\([^,()]+,\s*["']([a-z_]+\.[a-z_-]+)["']""")


def flat(table: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def texts(lang: str) -> dict[str, str]:
    return flat(tomllib.loads((MESSAGES / f"{lang}.toml").read_text(encoding="utf-8")))


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_english_and_chinese_have_the_same_keys():
    en, zh = texts("en"), texts("zh")
    assert sorted(set(en) - set(zh)) == [] and sorted(set(zh) - set(en)) == []


@pytest.mark.parametrize("key", sorted(texts("zh")))
def test_a_translation_uses_only_the_placeholders_the_english_text_is_given(key):
    assert placeholders(texts("zh")[key]) <= placeholders(texts("en")[key]), key


def test_every_text_the_code_asks_for_exists():
    en = texts("en")
    asked = {m for path in [*ROOT.glob("bot/**/*.py"), *ROOT.glob("engine/**/*.py")]
             for m in TEXT_KEY.findall(path.read_text(encoding="utf-8"))}
    assert len(asked) > 30   # the pattern really finds the calls
    assert sorted(k for k in asked if k not in en) == []


def test_the_bot_code_holds_no_chinese_text():
    """Chinese lives in zh.toml only (the engine's glossary and cue words are data, not texts shown)."""
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.glob("bot/**/*.py") if CJK.search(p.read_text("utf-8"))]
    assert offenders == []


def test_command_texts_come_from_the_store_in_both_languages():
    assert t("zh", "discord.name_animate") == "动画" and t("en", "discord.name_animate") == "animate"
    assert t("zh-TW", "telegram.help") == "使用说明" and t("en-US", "telegram.help") == "How to use this bot"
