"""Run the bot against a fake Discord, in its own process.

    FAKE_DISCORD_URL=http://127.0.0.1:PORT/api/v10 FAKE_DISCORD_GATEWAY=ws://127.0.0.1:PORT/ \\
        python -m tests.fakes.launch [bot arguments]

``FakeDiscord.env()`` gives both variables. The bot itself is unmodified: only discord.py's
two endpoint attributes are changed before ``bot.__main__.main`` runs, and its return value
is the exit status.
"""

from __future__ import annotations

import os
import sys

from bot.__main__ import main as bot_main
from tests.fakes.discord.redirect import set_discord_py_urls


def main() -> int:
    set_discord_py_urls(os.environ["FAKE_DISCORD_URL"], os.environ["FAKE_DISCORD_GATEWAY"])
    return bot_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
