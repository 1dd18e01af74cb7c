"""Structured prompts: templates, the builder on real English and Chinese prompts, caption flags, hints and
step advice (on sample photos bundled with scikit-image)."""

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from engine.errors import UserError
from engine.media.detail import image_detail
from engine.prompts import (
    CAMERAS,
    SLOTS,
    SPEEDS,
    TEMPLATES_DIR,
    Advice,
    Hint,
    PromptSpec,
    available_templates,
    build_prompt,
    check_choice,
    load_glossary,
    load_templates,
    normalize_choice,
    parse_flags,
    prompt_hints,
    resolve_auto_preset,
    step_advice,
)

ROOT = Path(__file__).resolve().parent.parent
CJK = re.compile(r"[\u3400-\u9fff]")
# Words the builder may drop: auxiliaries and relatives before the action ("a cat that is turning"), and
# the "of" of a leading shot type ("close-up of a cat").
FILLERS = {"is", "are", "was", "were", "be", "being", "that", "who", "which", "of"}

ENGLISH_PROMPTS = [
    "a cat turning its head",
    "a dog running on the beach at sunset",
    "ocean waves crashing on the rocks",
    "a girl with long hair smiling and waving",
    "leaves falling from the tree",
    "clouds drifting across the sky",
    "a woman dancing in the rain",
    "a bird flying over the mountains",
    "the flag waves in the wind",
    "a candle flame flickering in a dark room",
    "smoke rising from a cup of coffee",
    "a horse galloping through a field",
    "an old man nodding slowly",
    "a waterfall flowing into a lake",
    "a baby laughing",
    "fireworks exploding in the night sky",
    "a car driving down a city street at night",
    "snow falling on a quiet village",
    "a butterfly landing on a flower",
    "a robot waving its hand",
    "the astronaut floating in space",
    "Portrait of a woman, hair blowing in the wind, soft light",
    "A golden retriever wagging its tail.",
    "a koi fish swimming in a pond",
    "steam rising from hot noodles",
    "a girl's dress fluttering in the breeze",
    "rain drops rippling on the water surface",
    "a sunflower swaying gently",
    "two kittens playing with a ball of yarn",
    "a man walking his dog in the park, camera pans left",
    "a cat",
    "sunset over the ocean",
    "on the beach",
    "close-up",
    "a cat sleeping on a sofa in slow motion",
    "a tiger is walking through the jungle",
    "a dog that runs across the yard",
    "close-up of a cat turning its head",
    "a woman with flowing hair walks through a field",
    "waves crash on the beach",
]
CHINESE_PROMPTS = [
    "一只猫慢慢转头",
    "女孩在海边跑步，头发随风飘",
    "一只白色的猫和狗在草地上跑",
    "下雨，海浪拍打岩石，慢动作",
    "天空中云在飘",
    "小狗摇尾巴",
    "女孩微笑，眨眼",
    "男人在城市街道上走路，夜晚",
    "花朵在风中摇摆",
    "火焰燃烧",
    "瀑布流动，特写",
    "蝴蝶在花园里飞",
    "女孩转身，长发飘动，镜头推进",
    "一群鸟在天空飞翔",
    "婴儿笑",
    "河流流动，森林，日落",
]


@pytest.fixture(scope="module")
def templates():
    return load_templates()


@pytest.fixture(scope="module")
def glossary(templates):
    return templates.glossary


def build(text, camera=None, speed=None, **kw):
    return build_prompt(PromptSpec(text, camera, speed, **kw), load_templates())


def words(text):
    return set(re.findall(r"[\w'-]+", text.lower()))


def assert_clean(prompt):
    """No trace of an emptied slot: no empty group, dangling comma or doubled space."""
    for bad in ("[]", ": ]", ", ]", ": ,", ",,", "  ", "{", "}", "[ ", " ]"):
        assert bad not in prompt, (bad, prompt)
    assert prompt == prompt.strip()


# ---------------------------------------------------------------- choices and glossary


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("zoom in", "zoom-in"),
        ("zoom-in", "zoom-in"),
        ("zoom_in", "zoom-in"),
        ("ZoomIn", "zoom-in"),
        ("zoomin", "zoom-in"),
        ("Zoom In", "zoom-in"),
        (" PAN LEFT ", "pan-left"),
        ("tilt_up", "tilt-up"),
        ("TiltDown", "tilt-down"),
        ("Static", "static"),
        ("slow-mo", "slow"),
        ("push in", "zoom-in"),
        ("Fast", "fast"),
        ("zoom\u2014in", "zoom-in"),
        ("sideways", "sideways"),
    ],
)
def test_normalize_choice(raw, expected):
    assert normalize_choice(raw) == expected


def test_every_choice_normalizes_to_itself():
    for choice in CAMERAS + SPEEDS:
        assert normalize_choice(choice) == choice
        assert normalize_choice(choice.replace("-", " ").title()) == choice


@pytest.mark.parametrize("kind, bad", [("camera", "sideways"), ("speed", "warp")])
def test_unknown_choice_names_the_valid_ones(kind, bad):
    with pytest.raises(UserError) as err:
        check_choice(kind, bad)
    valid = CAMERAS if kind == "camera" else SPEEDS
    assert err.value.key == f"unknown_{kind}"
    assert bad in str(err.value) and all(v in str(err.value) for v in valid)


def test_glossary_covers_choices_and_sixty_chinese_words(glossary):
    assert set(glossary.cameras) == set(CAMERAS) and set(glossary.speeds) == set(SPEEDS)
    assert glossary.cameras["zoom-in"] == "slow zoom in, dolly forward"
    assert glossary.speeds["slow"] == "slow motion, smooth transition"
    translated = [w for w, (cat, _) in glossary.zh.items() if cat != "skip"]
    assert len(translated) >= 60
    assert all(eng and not CJK.search(eng) for cat, eng in glossary.zh.values() if cat != "skip")


@pytest.mark.parametrize(
    "zh, english",
    [
        ("走", "walking"),
        ("跑", "running"),
        ("飞", "flying"),
        ("转头", "head rotation"),
        ("微笑", "smiling"),
        ("眨眼", "blinking"),
        ("飘", "floating, drifting"),
        ("下雨", "raining"),
        ("海浪", "ocean waves"),
        ("推进", "zoom in"),
        ("拉近", "zoom in"),
        ("拉远", "zoom out"),
        ("左移", "pan left"),
        ("向左平移", "pan left"),
        ("环绕", "orbit"),
        ("慢动作", "slow motion"),
        ("猫", "cat"),
        ("狗", "dog"),
        ("女孩", "girl"),
        ("风", "wind"),
        ("水", "water"),
        ("云", "clouds"),
        ("火", "fire"),
        ("花", "flowers"),
        ("头发", "hair"),
        ("树", "trees"),
    ],
)
def test_glossary_words(glossary, zh, english):
    assert glossary.zh[zh][1] == english


def test_segment_takes_the_longest_match_and_keeps_unknown_text(glossary):
    assert [t[2] for t in glossary.segment("向左平移")] == ["向左平移"]
    assert [(c, o) for c, _, o in glossary.segment("皮卡丘转头")] == [
        ("unknown", "皮卡丘"),
        ("action", "转头"),
    ]


# ---------------------------------------------------------------- templates


def test_default_templates_load_and_are_cached(templates):
    assert templates.name == "default"
    assert templates.format == (
        "[Subject: {subject}] [Action: {action}, {speed}] [Camera: {camera}] [Environment: {environment}]"
    )
    assert load_templates() is templates
    assert load_templates(TEMPLATES_DIR, "default") is templates
    assert "default" in available_templates() and "glossary" not in available_templates()


def copy_templates(tmp_path):
    folder = tmp_path / "prompts"
    shutil.copytree(TEMPLATES_DIR, folder)
    return folder


def test_edited_template_is_read_again(tmp_path):
    folder = copy_templates(tmp_path)
    first = load_templates(folder)
    path = folder / "default.toml"
    path.write_text(
        path.read_text(encoding="utf-8").replace("[Camera: {camera}]", "[Shot: {camera}]"), encoding="utf-8"
    )
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_templates(folder)
    assert second is not first and "[Shot: {camera}]" in second.format
    assert build_prompt(PromptSpec("a cat", "orbit"), second).endswith(
        "[Shot: camera orbits around the subject, arc shot]"
    )


def test_owner_template_set_with_defaults_and_own_phrases(tmp_path):
    folder = copy_templates(tmp_path)
    (folder / "plain.toml").write_text(
        '# comma-separated keywords\nformat = "{subject}, {action}, {speed}, {camera}, {environment}"\n'
        '[defaults]\ncamera = "static"\nenvironment = "soft light"\n'
        '[speed]\nslow = "slow motion"\n',
        encoding="utf-8",
    )
    plain = load_templates(folder, "plain")
    assert sorted(available_templates(folder)) == ["default", "plain"]
    assert (
        build_prompt(PromptSpec("a cat turning its head", speed="slow"), plain)
        == "a cat, turning its head, slow motion, static shot, soft light"
    )
    assert (
        build_prompt(PromptSpec("a dog", camera="orbit"), plain)
        == "a dog, camera orbits around the subject, arc shot, soft light"
    )


@pytest.mark.parametrize("name", ["nope", "../default", "de fault", ""])
def test_unknown_template_set_is_a_user_error(name):
    with pytest.raises(UserError) as err:
        load_templates(name=name)
    assert err.value.key == "templates_unknown"
    if name == "nope":
        assert "default" in str(err.value)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('format = "[Subject: {subjekt}]"', "{subjekt}"),
        ('format = "[Subject: {subject!r}]"', "{subject}"),
        ("description = 'no format'", "format"),
        ("format = [unclosed", "not valid TOML"),
    ],
)
def test_broken_template_files_say_what_is_wrong(tmp_path, content, fragment):
    folder = copy_templates(tmp_path)
    (folder / "broken.toml").write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_templates(folder, "broken")
    assert fragment in str(err.value)


def test_every_combination_of_empty_slots_renders_cleanly(templates):
    values = {
        "subject": "a cat",
        "action": "turning its head",
        "speed": "slow motion",
        "camera": "static shot",
        "environment": "on a sofa",
    }
    labels = {
        "subject": "Subject",
        "action": "Action",
        "speed": "Action",
        "camera": "Camera",
        "environment": "Environment",
    }
    for filled in itertools.chain.from_iterable(itertools.combinations(SLOTS, n) for n in range(6)):
        prompt = templates.render({s: values[s] for s in filled})
        assert_clean(prompt)
        for slot in SLOTS:
            assert (values[slot] in prompt) == (slot in filled)
        for label in set(labels.values()):
            assert (f"[{label}:" in prompt) == any(labels[s] == label for s in filled), (filled, prompt)
    assert templates.render({}) == ""
    assert templates.render({"speed": "slow motion"}) == "[Action: slow motion]"


# ---------------------------------------------------------------- the builder, English


@pytest.mark.parametrize(
    "spec, expected",
    [
        (
            PromptSpec("a cat turning its head", "static", "slow"),
            "[Subject: a cat] [Action: turning its head, slow motion, smooth transition] [Camera: static shot]",
        ),
        (PromptSpec("a cat turning its head"), "[Subject: a cat] [Action: turning its head]"),
        (
            PromptSpec("a girl walking on the beach at sunset", "zoom-in"),
            "[Subject: a girl] [Action: walking] [Camera: slow zoom in, dolly forward] "
            "[Environment: on the beach at sunset]",
        ),
        (
            PromptSpec("ocean waves crashing on the rocks", speed="fast"),
            "[Subject: ocean waves] [Action: crashing, fast motion, dynamic movement] [Environment: on the rocks]",
        ),
        (
            PromptSpec("close-up of a cat turning its head", "static"),
            "[Subject: a cat] [Action: turning its head] [Camera: static shot, close-up]",
        ),
        (
            PromptSpec("a man is slowly walking his dog in the park"),
            "[Subject: a man] [Action: slowly walking his dog] [Environment: in the park]",
        ),
        (
            PromptSpec("a woman with flowing hair walks through a field"),
            "[Subject: a woman with flowing hair] [Action: walks through a field]",
        ),
        (
            PromptSpec("a cat turning its head in slow motion", speed="slow"),
            "[Subject: a cat] [Action: turning its head, slow motion, smooth transition]",
        ),
        (
            PromptSpec("a cat sitting on a windowsill, rain falling outside"),
            "[Subject: a cat] [Action: sitting, rain falling outside] [Environment: on a windowsill]",
        ),
        (PromptSpec("a cat"), "[Subject: a cat]"),
        (PromptSpec("", "pan-left"), "[Camera: camera pans left]"),
        (
            PromptSpec("  a  cat\nturning  its head. ", "zoom in", "Slow"),
            "[Subject: a cat] [Action: turning its head, slow motion, smooth transition] "
            "[Camera: slow zoom in, dolly forward]",
        ),
    ],
)
def test_built_prompt_exact(templates, spec, expected):
    assert build_prompt(spec, templates) == expected


@pytest.mark.parametrize("text", ENGLISH_PROMPTS)
def test_english_builder_properties(templates, text):
    for camera, speed in [(None, None), ("orbit", "slow"), ("static", "fast")]:
        prompt = build_prompt(PromptSpec(text, camera, speed), templates)
        assert_clean(prompt)
        # With a speed choice, the user's "in slow motion" is said by the choice's "slow motion".
        droppable = FILLERS | ({"in"} if speed else set())
        assert words(text) - droppable <= words(prompt), "a word of the user's was lost"
        if camera:
            assert f"[Camera: {templates.cameras[camera]}" in prompt
        if speed:
            assert templates.speeds[speed] in prompt and prompt.count(templates.speeds[speed]) == 1
        # Building again from the built prompt changes nothing: it is structured and complete.
        assert build_prompt(PromptSpec(prompt, camera, speed), templates) == prompt


def test_user_subject_and_environment_are_merged_without_repeats(templates):
    spec = PromptSpec("a cat turning its head", subject="the cat", environment="on a red sofa")
    assert (
        build_prompt(spec, templates)
        == "[Subject: the cat] [Action: turning its head] [Environment: on a red sofa]"
    )
    spec = PromptSpec("turning its head in the garden", subject="an orange cat")
    assert (
        build_prompt(spec, templates)
        == "[Subject: an orange cat] [Action: turning its head] [Environment: in the garden]"
    )


def test_unknown_choice_in_spec_is_a_user_error(templates):
    with pytest.raises(UserError, match="Choose one of"):
        build_prompt(PromptSpec("a cat", camera="sideways"), templates)


# ---------------------------------------------------------------- structured input


def test_structured_prompt_is_kept_and_completed(templates):
    text = "[Subject: cat] [Action: head rotation]"
    assert build_prompt(PromptSpec(text), templates) == text
    assert (
        build_prompt(PromptSpec(text, "static", "slow"), templates)
        == "[Subject: cat] [Action: head rotation, slow motion, smooth transition] [Camera: static shot]"
    )


def test_structured_prompt_with_its_own_camera_gets_the_choice_inside_that_group(templates):
    assert (
        build_prompt(PromptSpec("[Subject: cat] [Camera: close-up]", "static", "slow"), templates)
        == "[Subject: cat] [Camera: close-up, static shot] [Action: slow motion, smooth transition]"
    )


def test_structured_prompt_already_holding_the_phrases_is_unchanged(templates):
    text = "[Subject: cat] [Action: head rotation, slow motion, smooth transition] [Camera: static shot]"
    assert build_prompt(PromptSpec(text, "static", "slow"), templates) == text


def test_structured_prompt_chinese_words_are_translated(templates):
    assert (
        build_prompt(PromptSpec("[Subject: 猫] [Action: 转头]", "orbit"), templates)
        == "[Subject: cat] [Action: head rotation] [Camera: camera orbits around the subject, arc shot]"
    )


# ---------------------------------------------------------------- the builder, Chinese


@pytest.mark.parametrize(
    "spec, expected",
    [
        (
            PromptSpec("一只猫慢慢转头", "zoom-in"),
            "[Subject: a cat] [Action: head rotation, slowly] [Camera: slow zoom in, dolly forward]",
        ),
        (
            PromptSpec("女孩在海边跑步，头发随风飘", speed="slow"),
            "[Subject: girl] [Action: running, hair floating, drifting, slow motion, smooth transition] "
            "[Environment: beach, in the wind]",
        ),
        (
            PromptSpec("一只白色的猫和狗在草地上跑"),
            "[Subject: a white cat and dog] [Action: running] [Environment: meadow]",
        ),
        (PromptSpec("皮卡丘在跳舞"), "[Subject: 皮卡丘] [Action: dancing]"),
        (
            PromptSpec("下雨，海浪拍打岩石，慢动作"),
            "[Subject: ocean waves] [Action: raining, crashing rocks, slow motion]",
        ),
        (
            PromptSpec("女孩转身，镜头推进", "zoom-in"),
            "[Subject: girl] [Action: turning around] [Camera: slow zoom in, dolly forward]",
        ),
        (PromptSpec("a cat 转头, 海边"), "[Subject: a cat] [Action: head rotation] [Environment: beach]"),
    ],
)
def test_chinese_built_prompt_exact(templates, spec, expected):
    assert build_prompt(spec, templates) == expected


@pytest.mark.parametrize("text", CHINESE_PROMPTS)
def test_chinese_builder_properties(templates, text):
    prompt = build_prompt(PromptSpec(text, "static", "slow"), templates)
    assert_clean(prompt)
    assert not CJK.search(prompt), "every word of these prompts is in the glossary"
    assert "[Subject:" in prompt or "[Action:" in prompt
    assert build_prompt(PromptSpec(prompt, "static", "slow"), templates) == prompt


@pytest.mark.parametrize(
    "text, kept",
    [
        ("皮卡丘在跳舞", "皮卡丘"),
        ("一只柯基在雪地里奔跑", "柯基"),
        ("机器人挥手，霓虹灯", "霓虹灯"),
    ],
)
def test_chinese_words_outside_the_glossary_are_kept(templates, text, kept):
    prompt = build_prompt(PromptSpec(text), templates)
    assert kept in prompt
    assert_clean(prompt)


# ---------------------------------------------------------------- caption flags


@pytest.mark.parametrize(
    "caption, text, options",
    [
        (
            "a cat turning its head --camera zoom-in --speed slow",
            "a cat turning its head",
            {"camera": "zoom-in", "speed": "slow"},
        ),
        (
            "a cat turning its head \u2014camera zoom-in \u2014speed slow",
            "a cat turning its head",
            {"camera": "zoom-in", "speed": "slow"},
        ),
        ("\u2013camera pan_left a dog", "a dog", {"camera": "pan-left"}),
        ("一只猫 \u2014\u2014camera orbit", "一只猫", {"camera": "orbit"}),
        ("--camera=ZoomOut --speed=FAST a dog", "a dog", {"camera": "zoom-out", "speed": "fast"}),
        ("a cat --camera zoom in --speed slow motion", "a cat", {"camera": "zoom-in", "speed": "slow"}),
        ("a cat --seed 42 walking", "a cat walking", {"seed": 42}),
        ("--seed 42, a cat", "a cat", {"seed": 42}),
        ('a cat --negative "blurry, dark" walking', "a cat walking", {"negative": "blurry, dark"}),
        ("a cat \u2014negative \u201clow quality\u201d", "a cat", {"negative": "low quality"}),
        ("a cat --neg blurry ugly --preset HQ", "a cat", {"negative": "blurry ugly", "preset": "hq"}),
        (
            '--subject "an orange cat" --env "on a sofa" turning its head',
            "turning its head",
            {"subject": "an orange cat", "environment": "on a sofa"},
        ),
        ("a cat \u2014 walking on the beach", "a cat \u2014 walking on the beach", {}),
        ("a dog \u2014wagging its tail", "a dog \u2014wagging its tail", {}),
        ("a cat\n--camera static", "a cat", {"camera": "static"}),
        ("", "", {}),
        ("no options at all", "no options at all", {}),
    ],
)
def test_parse_flags(caption, text, options):
    assert parse_flags(caption) == (text, options)


@pytest.mark.parametrize(
    "caption, key, fragment",
    [
        (
            "a cat --camera sideways",
            "unknown_camera",
            "static, zoom-in, zoom-out, pan-left, pan-right, tilt-up",
        ),
        ("a cat \u2014speed warp", "unknown_speed", "slow, normal, fast"),
        ("a cat --speed", "missing_value", "--speed slow"),
        ("--camera --speed slow", "missing_value", "--camera"),
        ("--seed abc", "bad_seed", "whole number"),
        ("--seed -5", "bad_seed", "whole number"),
        ("--seed 99999999999", "bad_seed", "4294967295"),
        ("--foo bar a cat", "unknown_option", "--camera"),
        ('--negative "never closed', "unclosed_quote", "quote"),
        ("--preset ../../x", "bad_preset", "preset"),
    ],
)
def test_parse_flags_errors_are_clear(caption, key, fragment):
    with pytest.raises(UserError) as err:
        parse_flags(caption)
    assert err.value.key == key
    assert fragment in str(err.value)


def test_flags_then_builder(templates):
    text, options = parse_flags("一只猫慢慢转头 \u2014camera zoom-in")
    prompt = build_prompt(PromptSpec(text, options.get("camera"), options.get("speed")), templates)
    assert prompt == "[Subject: a cat] [Action: head rotation, slowly] [Camera: slow zoom in, dolly forward]"


# ---------------------------------------------------------------- hints


def keys(text, glossary):
    return [h.key for h in prompt_hints(text, glossary)]


@pytest.mark.parametrize(
    "text",
    [
        "a cat moving",
        "make it move",
        "animate this photo of a dog",
        "clouds moving across the sky",
        "the girl doing something",
        "让猫动起来",
    ],
)
def test_vague_motion_hint_fires(glossary, text):
    hints = [h for h in prompt_hints(text, glossary) if h.key == "vague_motion"]
    assert len(hints) == 1
    assert hints[0].params["suggestion"] in hints[0].message
    assert hints[0].params["word"] in hints[0].message


@pytest.mark.parametrize(
    "text",
    [
        "a cat turning its head",
        "a girl walking, moving her arms while dancing",
        "a cat turning its head in slow motion",
        "slow motion waves rolling",
        "[Action: head rotation, slow motion, smooth transition]",
        "一只猫转头",
    ],
)
def test_vague_motion_hint_does_not_fire(glossary, text):
    assert "vague_motion" not in keys(text, glossary)


def test_vague_hint_suggests_for_the_subject(glossary):
    (hint,) = [h for h in prompt_hints("a cat moving", glossary) if h.key == "vague_motion"]
    assert hint.params["suggestion"] == glossary.suggestions["cat"]
    (hint,) = [h for h in prompt_hints("clouds moving", glossary) if h.key == "vague_motion"]
    assert hint.params["suggestion"] == glossary.suggestions["clouds"]


LONG = (
    "a beautiful young woman with long flowing golden hair wearing an elegant red silk dress standing "
    "on a rocky cliff above the stormy ocean at sunset turning her head"
)


def test_too_long_hint(glossary):
    (hint,) = [h for h in prompt_hints(LONG, glossary) if h.key == "too_long"]
    assert hint.params["words"] > 15 and str(hint.params["words"]) in hint.message
    assert "too_long" not in keys(
        "a beautiful young woman with long golden hair turning her head slowly", glossary
    )
    # Stop words are not counted: 15 content words among many small ones stay under the limit.
    fifteen = (
        "the cat and the dog and the bird with the fox and the owl on the hill in the wood by the lake "
        "and the tree at the barn of the farm under the sky with the moon and the sun and the rain"
    )
    assert "too_long" not in keys(fifteen, glossary)
    assert "too_long" in keys(fifteen + " and snow", glossary)


def test_too_long_hint_counts_chinese_words(glossary):
    text = "一只可爱的白色小猫和一只黑色小狗在花园的草地上奔跑跳舞，蝴蝶飞翔，花朵摇摆，阳光，日落，河流流动"
    assert "too_long" in keys(text, glossary)
    assert "too_long" not in keys("一只猫慢慢转头", glossary)


@pytest.mark.parametrize("text", ["a cat", "sunset over the ocean", "portrait of an old man", "", "猫", "?!"])
def test_no_action_hint_fires(glossary, text):
    hints = [h for h in prompt_hints(text, glossary) if h.key == "no_action"]
    assert len(hints) == 1 and hints[0].params["examples"] in hints[0].message


@pytest.mark.parametrize(
    "text",
    [
        "a cat turning its head",
        "waves crash on the beach",
        "the girl smiles",
        "slow zoom in on a castle",
        "一只猫转头",
        "[Action: head rotation]",
        "a cat 眨眼",
    ],
)
def test_no_action_hint_does_not_fire(glossary, text):
    assert "no_action" not in keys(text, glossary)


def test_mostly_chinese_hint_gives_the_translation(glossary):
    (hint,) = [h for h in prompt_hints("一只猫慢慢转头", glossary) if h.key == "mostly_chinese"]
    assert hint.params == {"translation": "a cat, head rotation, slowly", "unknown": "", "untranslated": ""}
    assert "English" in hint.message and "a cat, head rotation, slowly" in hint.message
    (hint,) = [h for h in prompt_hints("皮卡丘在跳舞", glossary) if h.key == "mostly_chinese"]
    assert hint.params["unknown"] == "皮卡丘" and "皮卡丘" in hint.message


@pytest.mark.parametrize("text", ["a cat turning its head", "a cat 转头 slowly in the garden", ""])
def test_mostly_chinese_hint_does_not_fire(glossary, text):
    assert "mostly_chinese" not in keys(text, glossary)


def test_a_good_prompt_gets_no_hints(glossary):
    assert prompt_hints("a cat turning its head, static shot", glossary) == []


def test_hints_are_plain_records(glossary):
    for hint in prompt_hints("让猫动起来" + "，猫" * 20, glossary):
        assert isinstance(hint, Hint) and re.fullmatch(r"[a-z_]+", hint.key) and hint.message.endswith(".")
        assert isinstance(hint.params, dict)


# ---------------------------------------------------------------- step advice


@pytest.fixture(scope="module")
def detail_scores():
    photos = {
        "moon": skimage.data.moon(),
        "chelsea": skimage.data.chelsea(),
        "gravel": skimage.data.gravel(),
        "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(),
    }
    return {name: image_detail(Image.fromarray(np.asarray(a))).score for name, a in photos.items()}


def test_step_advice_on_the_prompt_alone():
    assert step_advice("a cat turning its head", None) == Advice(False, [], [])
    slow = step_advice("[Action: turning its head, slow motion, smooth transition]", None)
    assert not slow.suggest_hq and slow.keys == ["slow_motion"]
    both = step_advice("hair blowing in the wind, slow motion", None)
    assert both.suggest_hq and both.keys == ["slow_motion", "texture_words"]
    assert "hair" in both.reasons[1]
    assert step_advice("intricate lace fabric fluttering slowly", None).suggest_hq
    assert step_advice("头发随风飘，慢动作", None).suggest_hq


def test_slow_camera_phrase_is_not_slow_motion():
    assert step_advice("[Subject: a castle] [Camera: slow zoom in, dolly forward]", None).keys == []


@pytest.mark.parametrize(
    "prompt, photo, hq",
    [
        ("a cat turning its head", "moon", False),  # smooth photo, plain prompt
        ("the moon glowing, slow motion", "moon", False),  # one point only
        ("a cat turning its head", "chelsea", False),  # detailed photo, plain prompt: one point
        ("a cat's fur blowing in the wind", "chelsea", True),  # detailed photo + texture words
        ("a cat turning its head, slow motion", "chelsea", True),
        ("stones rolling", "gravel", True),  # very detailed photo counts twice
        ("steam rising from the coffee", "coffee", False),
        ("steam rising from the water", "coffee", True),
        ("a rocket launching, smoke, slow motion", "rocket", True),
        ("a rocket launching", "rocket", False),
    ],
)
def test_step_advice_with_sample_photos(detail_scores, prompt, photo, hq):
    advice = step_advice(prompt, detail_scores[photo])
    assert advice.suggest_hq is hq, (advice, detail_scores[photo])
    assert len(advice.reasons) == len(advice.keys)
    assert resolve_auto_preset(advice) == ("hq" if hq else "quick")


def test_step_advice_reports_the_image_score(detail_scores):
    advice = step_advice("stones", detail_scores["gravel"])
    assert advice.keys == ["very_detailed_image"] and f"{detail_scores['gravel']:.2f}" in advice.reasons[0]


def test_auto_preset_from_built_prompt(templates, detail_scores):
    prompt = build_prompt(PromptSpec("一只猫慢慢转头", speed="slow"), templates)
    assert resolve_auto_preset(step_advice(prompt, detail_scores["chelsea"])) == "hq"
    assert resolve_auto_preset(step_advice(prompt, detail_scores["moon"])) == "quick"


# ---------------------------------------------------------------- boundaries


def test_load_glossary_alone():
    assert load_glossary().zh["猫"] == ("subject", "cat")


def test_prompts_module_pulls_no_heavy_or_chat_library():
    code = (
        "import sys, engine.prompts; "
        "print(sorted(m for m in ('torch', 'diffusers', 'discord', 'telegram', 'skimage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
