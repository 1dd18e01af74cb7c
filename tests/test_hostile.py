"""The hostile-input corpus through the bot core, as a front end submits it: every case gets one clear
message in the user's language (or is accepted), nothing is queued for a refusal, and the bot keeps serving."""

import asyncio

import pytest

from bot.core import JobRequest
from bot.texts import error_text
from engine.errors import UserError
from tests.harness import make_config, photo_bytes, running_stack
from tests.hostile_inputs import IMAGE_LIMITS, PROMPT_LIMITS, image_corpus, prompt_corpus


def one_clear_sentence(text: str) -> bool:
    return "\n" not in text and 10 < len(text) <= 220 and text.rstrip()[-1] in ".。!！?？"


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path, limits={
        "max_image_bytes": IMAGE_LIMITS["max_bytes"], "max_image_pixels": IMAGE_LIMITS["max_pixels"],
        "min_image_side": IMAGE_LIMITS["min_side"], "max_prompt_chars": PROMPT_LIMITS["max_chars"],
        "blocked_words": list(PROMPT_LIMITS["blocked_words"])}, queue={"per_user": 100, "max_length": 100})


def req(image: bytes, prompt: str = "a cat turning its head", locale: str = "en") -> JobRequest:
    return JobRequest(platform="test", user_id="1", user_name="eve", chat_id="c", locale=locale, image=image,
                      prompt=prompt)


async def test_every_hostile_image_gets_one_clear_answer(config):
    cases = image_corpus()
    assert len(cases) >= 30
    async with running_stack(config, with_worker=False) as stack:
        for name, data, expected in cases:
            try:
                sub = await asyncio.wait_for(stack.core.submit(req(data)), 10)
            except UserError as exc:
                assert exc.key == expected, name
                for locale in ("en", "zh-CN"):
                    assert one_clear_sentence(error_text(exc, locale)), (name, locale, error_text(exc, locale))
            else:
                assert expected is None, name
                assert sub.job.state == "queued"
        accepted = sum(1 for _, _, k in cases if k is None)
        assert len(await stack.service.store.queued()) == accepted


async def test_every_hostile_prompt_gets_one_clear_answer(config):
    async with running_stack(config, with_worker=False) as stack:
        image = photo_bytes()
        for name, prompt, expected in prompt_corpus():
            try:
                sub = await stack.core.submit(req(image, prompt))
            except UserError as exc:
                assert exc.key == expected, name
                assert one_clear_sentence(error_text(exc, "en")), (name, error_text(exc, "en"))
            else:
                assert expected is None, name
                assert sub.job.prompt_raw.strip() and len(sub.job.prompt_raw) <= PROMPT_LIMITS["max_chars"]
                assert not any(c < " " for c in sub.job.prompt_raw), name


async def test_the_bot_keeps_serving_after_the_corpus(config, tiny_parts):
    async with running_stack(config, tiny_parts) as stack:
        for _, data, _ in image_corpus()[:24]:
            try:
                await stack.core.submit(req(data))
            except UserError:
                pass
        sub = await stack.core.submit(req(photo_bytes()))
        async for event in stack.service.events(sub.job.id):
            last = event
        assert type(last).__name__ == "Done"


async def test_per_server_word_list(tmp_path):
    config = make_config(tmp_path, limits={"words": {"guild42": ["dragon"]}})
    async with running_stack(config, with_worker=False) as stack:
        with pytest.raises(UserError) as exc:
            await stack.core.submit(JobRequest(platform="test", user_id="1", user_name="", chat_id="c", locale="en",
                                               image=photo_bytes(), prompt="a dragon flying", scope="guild42"))
        assert exc.value.key == "prompt_blocked_word" and "dragon" not in str(exc.value)
        await stack.core.submit(JobRequest(platform="test", user_id="1", user_name="", chat_id="c", locale="en",
                                           image=photo_bytes(), prompt="a dragon flying", scope="other"))
