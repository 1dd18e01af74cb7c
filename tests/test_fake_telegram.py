"""The fake Bot API server, driven by the real python-telegram-bot client over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import io
import logging
import random
import time
from collections.abc import AsyncIterator

import pytest
from PIL import Image
from telegram import (
    Bot,
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    MessageEntity,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, EndPointNotFound, Forbidden, NetworkError, RetryAfter, TimedOut
from telegram.ext import Application, ApplicationBuilder, BaseHandler, CommandHandler, TypeHandler

from tests.fakes.telegram_server import FakeTelegram, command_entities, render_html

# httpx logs every request URL at INFO, and Bot API URLs contain the token.
logging.getLogger("httpx").setLevel(logging.WARNING)

MB = 1024 * 1024


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    image = Image.new("RGB", (width, height), (seed * 40 % 256, 120, 200))
    image.putpixel((0, 0), (255, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fake_video(size: int) -> bytes:
    return b"\x00\x00\x00\x18ftypmp42" + random.Random(size).randbytes(size)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server
        assert server.unknown_methods == []
        assert server.server_errors == []


def build_app(fake: FakeTelegram) -> Application:
    return (
        ApplicationBuilder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .build()
    )


@contextlib.asynccontextmanager
async def polling_app(fake: FakeTelegram, *handlers: BaseHandler) -> AsyncIterator[Application]:
    app = build_app(fake)
    for handler in handlers:
        app.add_handler(handler)
    async with app:
        await app.start()
        await app.updater.start_polling(poll_interval=0, timeout=1)
        try:
            yield app
        finally:
            await app.updater.stop()
            await app.stop()


@contextlib.asynccontextmanager
async def plain_bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url) as bot:
        yield bot


def collector() -> tuple[asyncio.Queue[Update], TypeHandler]:
    queue: asyncio.Queue[Update] = asyncio.Queue()

    async def collect(update: Update, context: object) -> None:
        await queue.put(update)

    return queue, TypeHandler(Update, collect)


async def next_update(queue: asyncio.Queue[Update]) -> Update:
    return await asyncio.wait_for(queue.get(), 5)


async def test_photo_to_video_round_trip_with_real_client(fake: FakeTelegram, monkeypatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # RetryAfter.retry_after as timedelta, no deprecation path
    updates, handler = collector()
    alice = fake.user("Alice", language_code="zh")
    chat = fake.private_chat(alice)
    image = png_bytes(400, 300)
    video = fake_video(2 * MB)  # above aiohttp's default 1 MiB body limit
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data="cancel:1")]])

    async with polling_app(fake, handler) as app:
        bot = app.bot
        assert bot.username == "animabot"
        sent = fake.send_photo(chat, alice, image, caption="/animate a cat walking")
        message = (await next_update(updates)).effective_message
        assert (message.message_id, message.caption) == (sent.message_id, "/animate a cat walking")
        assert message.from_user.language_code == "zh"
        assert message.parse_caption_entities([MessageEntity.BOT_COMMAND]) == {
            message.caption_entities[0]: "/animate"
        }

        sizes = message.photo
        assert len(sizes) >= 3 and [s.width for s in sizes] == sorted(s.width for s in sizes)
        assert (sizes[-1].width, sizes[-1].height) == (400, 300)
        largest = await (await bot.get_file(sizes[-1].file_id)).download_as_bytearray()
        assert bytes(largest) == image
        smallest = await (await bot.get_file(sizes[0].file_id)).download_as_bytearray()
        assert max(Image.open(io.BytesIO(smallest)).size) == 90

        status = await bot.send_message(
            chat.id,
            "Queued (position 1)",
            reply_markup=keyboard,
            reply_parameters=ReplyParameters(message.message_id),
        )
        assert status.message_id == sent.message_id + 1
        assert status.reply_to_message.message_id == sent.message_id
        await status.edit_text("Rendering 10%", reply_markup=keyboard)
        fake.fail_next("editMessageText", status=429, retry_after=3)
        with pytest.raises(RetryAfter) as flood:
            await status.edit_text("Rendering 50%", reply_markup=keyboard)
        assert flood.value.retry_after == dtm.timedelta(seconds=3)
        await status.edit_text("Rendering 50%", reply_markup=keyboard)

        record = fake.message(chat.id, status.message_id)
        assert [r.text for r in record.history] == ["Queued (position 1)", "Rendering 10%", "Rendering 50%"]
        assert record.callback_data() == ["cancel:1"]
        assert [c.status for c in fake.calls_to("editMessageText")] == [200, 429, 200]
        assert fake.calls_to("sendMessage")[0].params["reply_markup"] == keyboard.to_dict()

        query = fake.press_button(chat, alice, record, "cancel:1")
        pressed = (await next_update(updates)).callback_query
        assert (pressed.data, pressed.message.message_id) == ("cancel:1", status.message_id)
        await pressed.answer("Cancelled")
        assert query.answer == {"text": "Cancelled"}

        await bot.send_chat_action(chat.id, ChatAction.UPLOAD_VIDEO)
        clip = await bot.send_video(
            chat.id,
            video,
            filename="cat.mp4",
            caption="a cat walking",
            width=64,
            height=64,
            duration=2,
            supports_streaming=True,
            reply_parameters=ReplyParameters(message.message_id),
        )
        upload = fake.calls_to("sendVideo")[0]
        assert (upload.files["video"].data, upload.files["video"].filename) == (video, "cat.mp4")
        assert upload.params["supports_streaming"] is True and upload.params["width"] == 64
        assert clip.video.file_size == len(video) and clip.caption == "a cat walking"
        assert clip.message_id == status.message_id + 1
        assert fake.bot_messages(chat.id)[-1].video.data == video
        again = await (await bot.get_file(clip.video.file_id)).download_as_bytearray()
        assert bytes(again) == video
        assert fake.chat_actions(chat.id) == ["upload_video"]

        await bot.set_my_commands([BotCommand("animate", "把照片变成视频")], language_code="zh")
        assert [c.command for c in await bot.get_my_commands(language_code="zh")] == ["animate"]
        assert await bot.get_my_commands() == ()
        assert fake.commands("zh") == [{"command": "animate", "description": "把照片变成视频"}]

    assert fake.pending_updates == []  # the shutdown getUpdates confirmed what was handled


async def test_commands_in_groups_reach_command_handler(fake: FakeTelegram) -> None:
    updates, handler = collector()
    arguments: asyncio.Queue[list[str]] = asyncio.Queue()

    async def on_animate(update: Update, context) -> None:
        await arguments.put(context.args)

    bob = fake.user("Bob", username="bob")
    group = fake.group_chat("Artists")
    async with polling_app(fake, CommandHandler("animate", on_animate), handler):
        fake.send_text(group, bob, "/animate@otherbot not for us")
        fake.send_text(group, bob, "/animate@animabot a dancing cat")
        assert await asyncio.wait_for(arguments.get(), 5) == ["a", "dancing", "cat"]

        fake.send_text(group, bob, "🎬 see /help, not /x/y")
        message = (await next_update(updates)).effective_message
        while message.text != "🎬 see /help, not /x/y":
            message = (await next_update(updates)).effective_message
        assert list(message.parse_entities([MessageEntity.BOT_COMMAND]).values()) == ["/help"]
        assert message.chat.type == "group" and message.chat.title == "Artists"
    assert arguments.empty()


async def test_album_and_forwarded_photo(fake: FakeTelegram) -> None:
    updates, handler = collector()
    alice, carol = fake.user("Alice"), fake.user("Carol")
    chat = fake.private_chat(alice)
    images = [png_bytes(160, 120, seed) for seed in range(3)]
    async with polling_app(fake, handler) as app:
        album = fake.send_album(chat, alice, images, caption="/animate all of them")
        received = [(await next_update(updates)).effective_message for _ in images]
        assert [m.message_id for m in received] == [m.message_id for m in album]
        assert len({m.media_group_id for m in received}) == 1 and received[0].media_group_id
        assert [m.caption for m in received] == ["/animate all of them", None, None]
        for message, image in zip(received, images, strict=True):
            data = await (await app.bot.get_file(message.photo[-1].file_id)).download_as_bytearray()
            assert bytes(data) == image

        fake.send_photo(chat, alice, images[0], forward_from=carol, reply_to=album[0])
        forwarded = (await next_update(updates)).effective_message
        assert forwarded.forward_origin.sender_user.id == carol.id
        assert forwarded.reply_to_message.message_id == album[0].message_id


async def test_file_size_limits_and_documents(fake: FakeTelegram) -> None:
    alice = fake.user()
    chat = fake.private_chat(alice)
    huge = fake.send_document(chat, alice, b"tiny", "big.png", "image/png", file_size=25 * MB)
    fits = fake.send_document(chat, alice, b"\x89PNG fits", "ok.png", "image/png", file_size=19 * MB)
    big_photo = fake.send_photo(chat, alice, b"not an image", file_size=21 * MB, width=4000, height=3000)
    async with plain_bot(fake) as bot:
        with pytest.raises(BadRequest, match="(?i)too big"):
            await bot.get_file(huge.document.file_id)
        with pytest.raises(BadRequest, match="(?i)too big"):
            await bot.get_file(big_photo.photo[-1].file_id)
        assert len(big_photo.photo) == 3 and big_photo.photo[-1].width == 4000
        small = await bot.get_file(big_photo.photo[0].file_id)
        assert bytes(await small.download_as_bytearray()) == b"not an image"
        file = await bot.get_file(fits.document.file_id)
        assert file.file_size == 19 * MB and file.file_path.endswith(".png")
        assert bytes(await file.download_as_bytearray()) == b"\x89PNG fits"
        with pytest.raises(BadRequest, match="(?i)invalid file_id"):
            await bot.get_file("no-such-file")
    assert fake.downloads == [big_photo.photo[0].file_path, fits.document.file_path]


async def test_real_api_errors(fake: FakeTelegram) -> None:
    alice = fake.user()
    chat = fake.private_chat(alice)
    user_message = fake.send_text(chat, alice, "hello")
    async with plain_bot(fake) as bot:
        sent = await bot.send_message(chat.id, "<b>Done</b> &lt;3", parse_mode=ParseMode.HTML)
        assert sent.text == "Done <3"
        with pytest.raises(BadRequest, match="(?i)not modified"):
            await bot.edit_message_text(
                "<b>Done</b> &lt;3", chat.id, sent.message_id, parse_mode=ParseMode.HTML
            )
        with pytest.raises(BadRequest, match="(?i)parse entities"):
            await bot.send_message(chat.id, "prompt: 1 < 2", parse_mode=ParseMode.HTML)
        with pytest.raises(BadRequest, match="(?i)too long"):
            await bot.send_message(chat.id, "x" * 4097)
        with pytest.raises(BadRequest, match="(?i)can't be edited"):
            await bot.edit_message_text("hijack", chat.id, user_message.message_id)
        with pytest.raises(BadRequest, match="(?i)BUTTON_DATA_INVALID"):
            markup = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="d" * 65)]])
            await bot.send_message(chat.id, "buttons", reply_markup=markup)
        with pytest.raises(BadRequest, match="(?i)chat not found"):
            await bot.send_message(-999, "nobody")
        assert await bot.delete_message(chat.id, sent.message_id)
        with pytest.raises(BadRequest, match="(?i)message to edit not found"):
            await bot.edit_message_text("gone", chat.id, sent.message_id)

        fake.fail_next("sendMessage", status=500)
        with pytest.raises(NetworkError, match="(?i)Internal Server Error"):
            await bot.send_message(chat.id, "first try")
        await bot.send_message(chat.id, "second try")
        fake.block_bot(chat)
        with pytest.raises(Forbidden, match="(?i)blocked"):
            await bot.send_message(chat.id, "are you there")
        fake.block_bot(chat, blocked=False)

        with pytest.raises(EndPointNotFound):
            await bot.do_api_request("sendFancyThing", api_kwargs={"chat_id": chat.id})
        assert fake.unknown_methods == ["sendFancyThing"]
        assert fake.calls[-1].response["description"] == "Not Found: method sendFancyThing"
        fake.unknown_methods.clear()

    texts = [m.text for m in fake.chat_messages(chat.id)]
    assert texts == ["hello", "second try"]
    assert [m.message_id for m in fake.chat_messages(chat.id, include_deleted=True)] == [1, 2, 3]


async def test_delayed_answer_times_out_but_still_sends(fake: FakeTelegram) -> None:
    alice = fake.user()
    chat = fake.private_chat(alice)
    async with plain_bot(fake) as bot:
        fake.delay_next("sendMessage", 0.5)
        with pytest.raises(TimedOut):
            await bot.send_message(chat.id, "slow", read_timeout=0.1)
        await fake.wait_for(lambda: fake.bot_messages(chat.id), timeout=3)
        assert fake.calls_to("sendMessage")[0].fault == "delay 0.5s"


async def test_edit_rate_limit_per_chat_per_minute() -> None:
    now = [1000.0]
    async with FakeTelegram(edit_limit_per_minute=3, clock=lambda: now[0]) as fake:
        alice = fake.user()
        chat, other = fake.private_chat(alice), fake.private_chat(fake.user("Dan"))
        async with plain_bot(fake) as bot:
            status = await bot.send_message(chat.id, "0%")
            for percent in (10, 20, 30):
                now[0] += 5
                await status.edit_text(f"{percent}%")
            with pytest.raises(RetryAfter):
                await status.edit_text("40%")
            assert fake.calls_to("editMessageText")[-1].response["parameters"] == {"retry_after": 50}
            assert fake.edits_per_minute(chat.id) == 3 and fake.edits_per_minute(other.id) == 0
            now[0] += 51
            await status.edit_text("40%")
            assert fake.edits_per_minute(chat.id) == 3  # 10%, 20% and 40% are inside the minute
        assert fake.message(chat.id, status.message_id).history[-1].text == "40%"


async def test_long_poll_waits_for_updates_and_close_releases_it() -> None:
    fake = await FakeTelegram().start()
    alice = fake.user()
    chat = fake.private_chat(alice)
    async with plain_bot(fake) as bot:
        started = time.monotonic()
        assert await bot.get_updates(timeout=0) == ()
        assert time.monotonic() - started < 1

        poll = asyncio.create_task(bot.get_updates(timeout=5))
        await asyncio.sleep(0.2)
        sent = fake.send_text(chat, alice, "wake up")
        updates = await asyncio.wait_for(poll, 2)
        assert [u.update_id for u in updates] == [sent.update_id]
        assert (await bot.get_updates(timeout=5))[0].message.text == "wake up"  # pending: answered at once
        assert await bot.get_updates(offset=sent.update_id + 1, timeout=0) == ()

        waiting = asyncio.create_task(bot.get_updates(offset=sent.update_id + 1, timeout=30))
        await fake.wait_for(lambda: fake.waiting_polls == 1, timeout=2)
        started = time.monotonic()
        await fake.close()
        assert time.monotonic() - started < 1
        assert await asyncio.wait_for(waiting, 3) == ()


def test_entities_and_html_rendering_follow_the_api() -> None:
    assert command_entities("🎬 /animate@animabot now") == [
        {"type": "bot_command", "offset": 3, "length": 17}
    ]
    assert command_entities("a/b /x_1 http://h/p") == [{"type": "bot_command", "offset": 4, "length": 4}]
    assert render_html(
        '<a href="https://x/?a=1&amp;b=2">link</a> &amp; <span class="tg-spoiler">s</span>'
    ) == ("link & s")
    for broken in ("1 < 2", "<b>open", "<br>", "<b>x</i>", "x</b>"):
        with pytest.raises(Exception, match="(?i)can't parse entities"):
            render_html(broken)
