"""A minimal `/ask` bot, the yardstick `bench/burst.py` measures our bot against.

    DISCORD_TOKEN=... OPENAI_API_KEY=... python bench/baseline_bot.py

This is a yardstick, not a product: the least a plain discord.py + openai bot does to
answer `/ask prompt:…`, and nothing more. It defers, asks the model (streamed unless
STREAM_RESPONSES=false), edits the deferred reply with the text so far at most once a
second, and makes one final edit the moment the model is done. It has no limits of any
kind (no concurrency cap, queue, cooldown, budget or access rules), no Stop button, no
Markdown-aware splitting (an answer is cut at 2000 characters), no retries beyond the SDK's
own, and one catch-all apology for every model error. Nothing it sends can ping anyone.

Settings, from the environment: DISCORD_TOKEN, OPENAI_API_KEY, OPENAI_BASE_URL (optional),
OPENAI_MODEL (default gpt-4o-mini), DISCORD_GUILD_ID (optional: sync the command to that
guild, else globally) and STREAM_RESPONSES (default true). SIGTERM closes it cleanly.
"""

import asyncio
import logging
import os
import signal

import discord
import openai
from discord import app_commands
from openai.types.chat import ChatCompletionMessageParam

MESSAGE_LIMIT = 2000
EDIT_INTERVAL = 1.0  # seconds between writes to one reply, the defer included
APOLOGY = "Sorry, the model could not answer that right now."

log = logging.getLogger("baseline")


class BaselineBot(discord.Client):
    """A client with one slash command, `/ask`, synced when it starts."""

    def __init__(
        self, model: openai.AsyncOpenAI, model_name: str, stream: bool, guild_id: int | None
    ) -> None:
        super().__init__(
            intents=discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.model = model
        self.model_name = model_name
        self.stream = stream
        self.guild_id = guild_id
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(
            app_commands.Command(name="ask", description="Ask the model", callback=self.ask)
        )

    async def setup_hook(self) -> None:
        if self.guild_id is None:
            await self.tree.sync()
            return
        guild = discord.Object(id=self.guild_id)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)

    async def ask(self, interaction: discord.Interaction, prompt: str) -> None:
        """Answer one `/ask`: defer, then show the model's answer in the deferred reply."""
        await interaction.response.defer(thinking=True)
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
        try:
            if self.stream:
                text = await self.streamed(interaction, messages)
            else:
                completion = await self.model.chat.completions.create(
                    model=self.model_name, messages=messages
                )
                text = completion.choices[0].message.content or ""
        except openai.OpenAIError as error:
            log.warning("the model failed: %s", type(error).__name__)
            text = APOLOGY
        await interaction.edit_original_response(content=shown(text))

    async def streamed(
        self,
        interaction: discord.Interaction,
        messages: list[ChatCompletionMessageParam],
    ) -> str:
        """Read the stream, editing the reply at most once a second; return the whole text."""
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        text = ""
        stream = await self.model.chat.completions.create(
            model=self.model_name, messages=messages, stream=True
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                if text and loop.time() - last_write >= EDIT_INTERVAL:
                    await interaction.edit_original_response(content=shown(text))
                    last_write = loop.time()
        return text


def shown(text: str) -> str:
    """What one message can hold of `text`: the naive cut, or a placeholder when empty."""
    return text[:MESSAGE_LIMIT] or "(the model gave no answer)"


async def run() -> None:
    guild = os.environ.get("DISCORD_GUILD_ID")
    model = openai.AsyncOpenAI(
        api_key=os.environ["OPENAI_API_KEY"], base_url=os.environ.get("OPENAI_BASE_URL")
    )
    client = BaselineBot(
        model,
        os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        stream=os.environ.get("STREAM_RESPONSES", "true").lower() != "false",
        guild_id=int(guild) if guild else None,
    )
    closing: set[asyncio.Task[None]] = set()

    def close() -> None:
        closing.add(asyncio.create_task(client.close()))

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, close)
    async with client, model:
        await client.start(os.environ["DISCORD_TOKEN"])
    await asyncio.gather(*closing)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(run())
