"""How fast `split_message` cuts a long answer, and how close it stays to the fewest messages.

Run: .venv/bin/python bench/split.py

Builds a deterministic answer of about 100 kB (prose, lists, quotes, many code blocks, some
emoji, links and mentions), splits it repeatedly and prints the median time per call with
the number of messages against the lower bound ceil(len / 2000); then the time for an answer
of the same size dense with backticks (inline code, four-backtick fences, stray backticks,
fences in the middle of lines), which the splitter reads the way Discord does. Prints
figures only.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable

from bot.answers.chunking import settled_count, split_message

LIMIT = 2000
TARGET = 100_000
RUNS = 21

VOCABULARY = [
    *["the", "model", "answer", "splits", "into", "messages", "while", "code", "blocks"],
    *["stay", "intact", "and", "every", "line", "keeps", "its", "meaning", "so", "readers"],
    *["never", "notice", "where", "one", "message", "ends", "and", "another", "begins"],
]
EXTRAS = [
    "https://docs.python.org/3/library/asyncio.html",
    "<@123456789012345678>",
    "<t:1700000000:R>",
    "`split_message()`",
    "\N{THUMBS UP SIGN}\N{EMOJI MODIFIER FITZPATRICK TYPE-4}",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "\N{REGIONAL INDICATOR SYMBOL LETTER F}\N{REGIONAL INDICATOR SYMBOL LETTER R}",
]
LANGUAGES = ["python", "js", "rust", "", "bash", "json"]
BACKTICKS = ["`x`", "``a ` b``", "```inline```", "`", "````md", "````", "\\`", "> `q`\n"]


def sentence(rng: random.Random) -> str:
    words = [rng.choice(VOCABULARY) for _ in range(rng.randint(6, 22))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(EXTRAS))
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "!", "?"])


def code_block(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(3, 60)):
        indent = "    " * rng.randint(0, 3)
        lines.append(indent + " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(1, 8))))
    return "\n".join([f"```{rng.choice(LANGUAGES)}", *lines, "```"])


def answer(seed: int = 2000) -> str:
    rng = random.Random(seed)
    blocks: list[str] = []
    size = 0
    while size < TARGET:
        kind = rng.random()
        if kind < 0.45:
            block = " ".join(sentence(rng) for _ in range(rng.randint(1, 6)))
        elif kind < 0.75:
            block = code_block(rng)
        elif kind < 0.9:
            block = "\n".join(f"- {sentence(rng)}" for _ in range(rng.randint(2, 8)))
        else:
            block = "> " + sentence(rng)
        blocks.append(block)
        size += len(block) + 2
    return "\n\n".join(blocks)


def backtick_answer(seed: int = 2000) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < TARGET:
        word = rng.choice(BACKTICKS) if rng.random() < 0.2 else rng.choice(VOCABULARY)
        words.append(word + rng.choice([" ", " ", " ", "\n", "\n\n"]))
        size += len(words[-1])
    return "".join(words)


def median_ms(call: Callable[[str, int], object], text: str) -> float:
    timings = []
    for _ in range(RUNS):
        began = time.perf_counter()
        call(text, LIMIT)
        timings.append(time.perf_counter() - began)
    return statistics.median(timings) * 1000


def main() -> None:
    text = answer()
    parts = split_message(text, LIMIT)
    lower_bound = math.ceil(len(text) / LIMIT)
    print(f"input length        {len(text):>10,} characters")
    print(f"split_message       {median_ms(split_message, text):>10.2f} ms per call (median)")
    print(f"settled_count       {median_ms(settled_count, text):>10.2f} ms per call (median)")
    print(f"messages produced   {len(parts):>10}")
    print(f"lower bound         {lower_bound:>10}  (ceil(len / {LIMIT}))")
    print(f"ratio               {len(parts) / lower_bound:>10.3f}")
    print(f"average fill        {statistics.mean(map(len, parts)) / LIMIT:>10.1%}")
    dense = backtick_answer()
    print(f"backtick-dense      {len(dense):>10,} characters")
    print(f"split_message       {median_ms(split_message, dense):>10.2f} ms per call (median)")


if __name__ == "__main__":
    main()
