"""End-to-end checks of the fake Discord with the real discord.py client, plus its HTTP rules on their own."""

from __future__ import annotations

import asyncio
import io
import json
import time

import aiohttp
import discord
import pytest
from discord import app_commands
from PIL import Image

from tests.fakes.discord_server import (
    CALLBACK_DEFERRED_MESSAGE,
    CALLBACK_MESSAGE,
    CALLBACK_MODAL,
    ERR_INVALID_WEBHOOK_TOKEN,
    ERR_UNKNOWN_INTERACTION,
    FLAG_EPHEMERAL,
    FakeDiscord,
)

pytestmark = pytest.mark.timeout(30)


def png_bytes(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


class AgainView(discord.ui.View):
    """The buttons under a finished video."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Again", custom_id="again")
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_message("Queued again", ephemeral=True)


class RenameModal(discord.ui.Modal, title="Rename"):
    name = discord.ui.TextInput(label="New name", custom_id="name")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"Renamed to {self.name.value}", ephemeral=True)


class DemoBot(discord.Client):
    """A tiny bot shaped like the real one: defer, download, edit with a file, follow up."""

    def __init__(self, guild_id: int):
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.guild = discord.Object(guild_id)
        self.ready_event = asyncio.Event()
        self.release = asyncio.Event()  # holds /slow after its defer until the test says so
        self.downloads: list[bytes] = []
        self.errors: list[discord.HTTPException] = []
        self._register_commands()

    async def setup_hook(self) -> None:
        self.add_view(AgainView())
        self.tree.copy_global_to(guild=self.guild)

    async def on_ready(self) -> None:
        self.ready_event.set()

    def _register_commands(self) -> None:
        @self.tree.command(description="Turn a photo into a short video")
        async def animate(interaction: discord.Interaction, prompt: str, image: discord.Attachment) -> None:
            await interaction.response.defer()
            data = await image.read()
            self.downloads.append(data)
            video = discord.File(io.BytesIO(b"MP4:" + data), filename="clip.mp4")
            await interaction.edit_original_response(
                content=f"Done: {prompt}", attachments=[video], view=AgainView()
            )
            await interaction.followup.send("Tap Again for another take.")

        @self.tree.command(description="Defers, then edits once the test releases it")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            await self.release.wait()
            try:
                await interaction.edit_original_response(content="finished")
            except discord.HTTPException as error:
                self.errors.append(error)
                # The token is gone: fall back to a plain channel message, idempotent by nonce.
                await interaction.channel.send(f"<@{interaction.user.id}> finished", nonce=interaction.id)

        @self.tree.command(description="Thinks, then answers with a followup")
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True)
            await interaction.followup.send("pong", ephemeral=True)

        @self.tree.command(description="Answers too late")
        async def lazy(interaction: discord.Interaction) -> None:
            await self.release.wait()
            try:
                await interaction.response.send_message("hello")
            except discord.HTTPException as error:
                self.errors.append(error)

        @self.tree.command(description="Opens a modal")
        async def rename(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(RenameModal())

        @self.tree.command(description="Show a preset")
        @app_commands.allowed_contexts(guilds=True, dms=True)
        async def preset(interaction: discord.Interaction, name: str) -> None:
            where = "dm" if interaction.guild_id is None else "guild"
            await interaction.response.send_message(f"{name} in {where}")

        @preset.autocomplete("name")
        async def preset_names(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            return [
                app_commands.Choice(name=p, value=p) for p in ("quick", "hq", "lite") if p.startswith(current)
            ]

        @self.tree.context_menu(name="Reroll")
        async def reroll(interaction: discord.Interaction, message: discord.Message) -> None:
            await interaction.response.send_message(f"Reroll of {message.id}: {message.content}")


@pytest.fixture
async def fake():
    async with FakeDiscord() as server:
        with server.install():
            yield server
    assert not server.server_errors


@pytest.fixture
async def bot(fake: FakeDiscord):
    client = DemoBot(fake.guild_id)
    task = asyncio.create_task(client.start(fake.token))
    try:
        await asyncio.wait_for(client.ready_event.wait(), 5)
        await client.tree.sync(guild=client.guild)
        yield client
    finally:
        await client.close()
        await task


async def test_client_connects_gets_ready_and_syncs(fake: FakeDiscord, bot: DemoBot):
    guild = bot.get_guild(fake.guild_id)
    assert guild is not None and guild.get_channel(fake.channel_id).name == "general"
    assert bot.user.id == fake.bot_user_id and bot.application_id == fake.application_id
    session = next(iter(fake.gateway_sessions.values()))
    assert session.compress in ("zlib-stream", "zstd-stream")  # discord.py's default, decoded correctly
    assert [e["t"] for e in fake.gateway_events[:2]] == ["READY", "GUILD_CREATE"]
    assert any(p["op"] == 1 for p in fake.gateway_received) and bot.latency < 1.0
    assert fake.command_syncs == 1
    synced = {c["name"]: c for c in fake.commands[fake.guild_id]}
    assert set(synced) == {"animate", "slow", "ping", "lazy", "rename", "preset", "Reroll"}
    assert [o["name"] for o in synced["animate"]["options"]] == ["prompt", "image"]
    assert [c.name for c in await bot.tree.fetch_commands(guild=bot.guild)] == list(synced)


async def test_slash_command_with_attachment_full_flow(fake: FakeDiscord, bot: DemoBot):
    photo = png_bytes()
    image = fake.add_attachment("cat.png", photo, "image/png")
    assert (image["width"], image["height"]) == (8, 6)

    interaction = await fake.slash_command(
        "animate", [{"name": "prompt", "value": "waves"}, {"name": "image", "value": image}]
    )
    await fake.wait_for(lambda: interaction.followup_ids)

    assert interaction.response_type == CALLBACK_DEFERRED_MESSAGE
    assert bot.downloads == [photo]
    edit = fake.requests_matching("PATCH", r"/messages/@original$")[0]
    assert edit.multipart and edit.files == [("clip.mp4", b"MP4:" + photo)]
    original = interaction.original_message
    assert original.content == "Done: waves" and not original.loading
    assert original.component_custom_ids() == ["again"]
    assert fake.read_attachment(original.attachments[0]) == b"MP4:" + photo
    assert original.attachments[0]["content_type"] == "video/mp4"
    assert [m.content for m in interaction.followups] == ["Tap Again for another take."]

    click = await fake.click_button(original.id, "again", user_id=fake.other_user_id)
    await fake.wait_for(lambda: click.responded)
    reply = click.original_message
    assert click.response_type == CALLBACK_MESSAGE
    assert reply.content == "Queued again" and reply.flags & FLAG_EPHEMERAL


async def test_first_followup_after_defer_fills_the_thinking_message(fake: FakeDiscord, bot: DemoBot):
    interaction = await fake.slash_command("ping")
    await fake.wait_for(lambda: interaction.original_message and not interaction.original_message.loading)
    original = interaction.original_message
    assert (original.content, original.ephemeral, interaction.followup_ids) == ("pong", True, [])


async def test_rate_limited_edit_is_retried(fake: FakeDiscord, bot: DemoBot):
    fake.fail_next("PATCH", r"/messages/@original$", status=429, retry_after=0.2)
    image = fake.add_attachment("dog.png", png_bytes(), "image/png")
    interaction = await fake.slash_command(
        "animate", [{"name": "prompt", "value": "x"}, {"name": "image", "value": image}]
    )
    await fake.wait_for(lambda: interaction.followup_ids)

    limited, retried = fake.requests_matching("PATCH", r"/messages/@original$")
    assert (limited.status, limited.fault, retried.status) == (429, "429", 200)
    assert retried.time - limited.time >= 0.2
    assert retried.files == limited.files and retried.files[0][1].startswith(b"MP4:")
    assert len(interaction.original_message.attachments) == 1 and fake.pending_faults == 0


async def test_expired_token_gives_50027_and_bot_falls_back_to_channel(fake: FakeDiscord, bot: DemoBot):
    interaction = await fake.slash_command("slow")
    await fake.wait_for(lambda: interaction.responded)
    fake.expire_interaction_token(interaction.token)
    bot.release.set()

    fallback = await fake.wait_for_request("POST", rf"^/channels/{fake.channel_id}/messages$")
    [error] = bot.errors
    assert (error.status, error.code) == (401, ERR_INVALID_WEBHOOK_TOKEN)
    assert fallback.json["nonce"] == str(interaction.id) and fallback.json["enforce_nonce"] is True
    message = fake.messages[max(fake.messages)]
    assert message.content == f"<@{fake.user_id}> finished" and interaction.original_message.loading


async def test_callback_after_ack_window_is_unknown_interaction(fake: FakeDiscord, bot: DemoBot):
    fake.interaction_ack_timeout_s = 0.05
    interaction = await fake.slash_command("lazy")
    await asyncio.sleep(0.1)
    bot.release.set()
    await fake.wait_for(lambda: bot.errors)
    assert isinstance(bot.errors[0], discord.NotFound) and bot.errors[0].code == ERR_UNKNOWN_INTERACTION
    assert not interaction.responded


async def test_channel_send_with_same_nonce_is_not_duplicated(fake: FakeDiscord, bot: DemoBot):
    channel = bot.get_channel(fake.channel_id)
    first = await channel.send("hello", nonce=77)
    again = await channel.send("hello", nonce=77)
    other = await channel.send("hello")
    assert first.id == again.id != other.id
    assert [m.content for m in fake.messages.values()] == ["hello", "hello"]
    edited = await first.edit(content="hello there")
    assert edited.content == "hello there" and fake.messages[first.id].history[0]["content"] == "hello"
    await first.delete()
    assert fake.messages[first.id].deleted
    with pytest.raises(discord.NotFound):
        await channel.fetch_message(first.id)


async def test_modal_and_message_context_menu(fake: FakeDiscord, bot: DemoBot):
    opener = await fake.slash_command("rename")
    await fake.wait_for(lambda: opener.responded)
    assert opener.response_type == CALLBACK_MODAL and opener.modal["title"] == "Rename"

    submit = await fake.submit_modal(opener.modal["custom_id"], {"name": "sunset"})
    await fake.wait_for(lambda: submit.responded)
    assert submit.original_message.content == "Renamed to sunset"

    posted = await fake.user_message("a photo of the sea")
    menu = await fake.message_command("Reroll", posted.id)
    await fake.wait_for(lambda: menu.responded)
    # Without the message content intent the bot sees the target's content in resolved data only.
    assert menu.original_message.content == f"Reroll of {posted.id}: a photo of the sea"


async def test_autocomplete_and_command_in_a_dm(fake: FakeDiscord, bot: DemoBot):
    typing = await fake.autocomplete("preset", [{"name": "name", "value": "q", "focused": True}])
    await fake.wait_for(lambda: typing.responded)
    assert typing.callbacks[0]["data"]["choices"] == [{"name": "quick", "value": "quick"}]

    await bot.tree.sync()  # guild commands are not offered in DMs: publish them globally too
    assert fake.command_syncs == 2 and "guild_id" not in fake.find_command("preset", guild_id=None)
    in_dm = await fake.slash_command("preset", [{"name": "name", "value": "hq"}], guild_id=None)
    await fake.wait_for(lambda: in_dm.responded)
    assert in_dm.original_message.content == "hq in dm"
    assert in_dm.channel_id == fake.dm_channel(fake.user_id) and "member" not in in_dm.payload


async def test_gateway_reconnect_resumes_and_keeps_working(fake: FakeDiscord, bot: DemoBot):
    await fake.send_reconnect()
    await fake.wait_for(lambda: any(p["op"] == 6 for p in fake.gateway_received))
    await fake.wait_until_connected()
    session = next(iter(fake.gateway_sessions.values()))
    assert session.resumes == 1 and len(fake.gateway_sessions) == 1
    interaction = await fake.slash_command("rename")
    await fake.wait_for(lambda: interaction.responded)


async def test_unsynced_command_is_refused_by_the_helper(fake: FakeDiscord, bot: DemoBot):
    with pytest.raises(LookupError, match="never synced"):
        await fake.slash_command("nope")


# --------------------------------------------------------------------------- raw HTTP rules, no client


@pytest.fixture
async def http(fake: FakeDiscord):
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {fake.token}"}) as session:
        yield session


async def test_unknown_route_is_recorded_and_answers_404_json(fake: FakeDiscord, http: aiohttp.ClientSession):
    async with http.get(fake.api_base + "/guilds/1/emojis") as response:
        assert response.status == 404
        assert response.headers["Content-Type"] == "application/json"
        assert (await response.json())["message"] == "404: Not Found"
    assert [r.path for r in fake.unknown_routes] == ["/guilds/1/emojis"]


async def test_missing_token_is_unauthorized(fake: FakeDiscord):
    async with aiohttp.ClientSession() as session, session.get(fake.api_base + "/users/@me") as response:
        assert response.status == 401


async def test_injected_500_and_delay(fake: FakeDiscord, http: aiohttp.ClientSession):
    fake.fail_next("GET", r"^/users/@me$", status=500)
    fake.delay_next("*", r"^/users/@me$", 0.15)
    async with http.get(fake.api_base + "/users/@me") as response:
        assert response.status == 500
    started = time.monotonic()
    async with http.get(fake.api_base + "/users/@me") as response:
        assert response.status == 200 and (await response.json())["id"] == str(fake.bot_user_id)
    assert time.monotonic() - started >= 0.15
    assert [r.fault for r in fake.requests] == ["500", "delay"]


async def test_multipart_message_with_two_files_is_served_by_the_cdn(
    fake: FakeDiscord, http: aiohttp.ClientSession
):
    form = aiohttp.FormData(quote_fields=False)
    payload = {
        "content": "two",
        "attachments": [{"id": 0, "filename": "a.png"}, {"id": 1, "filename": "b.txt"}],
    }
    form.add_field("payload_json", json.dumps(payload))
    form.add_field("files[0]", png_bytes(4, 3), filename="a.png", content_type="application/octet-stream")
    form.add_field("files[1]", b"text", filename="b.txt", content_type="application/octet-stream")
    async with http.post(f"{fake.api_base}/channels/{fake.channel_id}/messages", data=form) as response:
        body = await response.json()
    first, second = body["attachments"]
    assert (first["width"], first["height"], second["content_type"]) == (4, 3, "text/plain")
    async with http.get(second["url"]) as response:
        assert await response.read() == b"text"
    async with http.get(f"{fake.cdn_base}/attachments/1/2/missing.png") as response:
        assert response.status == 404


async def test_empty_message_and_bad_command_are_rejected(fake: FakeDiscord, http: aiohttp.ClientSession):
    async with http.post(f"{fake.api_base}/channels/{fake.channel_id}/messages", json={"content": ""}) as r:
        assert r.status == 400 and (await r.json())["code"] == 50006
    commands = f"{fake.api_base}/applications/{fake.application_id}/commands"
    async with http.put(commands, json=[{"name": "Bad Name", "description": "x"}]) as r:
        assert r.status == 400 and (await r.json())["code"] == 50035
    assert fake.command_syncs == 0


async def test_upload_over_the_size_limit_is_413(fake: FakeDiscord, http: aiohttp.ClientSession):
    fake.attachment_size_limit = 10
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("payload_json", json.dumps({"attachments": [{"id": 0, "filename": "big.bin"}]}))
    form.add_field("files[0]", b"x" * 11, filename="big.bin", content_type="application/octet-stream")
    async with http.post(f"{fake.api_base}/channels/{fake.channel_id}/messages", data=form) as response:
        assert response.status == 413 and (await response.json())["code"] == 40005
    assert not fake.messages and not fake.files
