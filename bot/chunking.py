"""`bot.chunking.split_message(text, limit)`, kept importable under this name for other tools.

The splitter lives in `bot.answers.chunking`.
"""

from bot.answers.chunking import MIN_LIMIT, close_open_fence, settled_count, split_message

__all__ = ["MIN_LIMIT", "close_open_fence", "settled_count", "split_message"]
