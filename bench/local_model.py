"""Figures for the built-in local model: start-up, first token, speed, memory.

    python -m bench.local_model [--model PATH] [--parallel N]

Prints cold start (start() until /health answers), time to first token and tokens/s for a
~100-token streamed answer, the same for N answers at once, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import time
from pathlib import Path

import openai

from bot.model.local_model import LocalModelServer

PROMPT = "Explain in a short paragraph why the sky is blue."
ANSWER_TOKENS = 100


async def _answer(client: openai.AsyncOpenAI, model: str) -> tuple[float, float, int]:
    """Streams one answer of exactly ANSWER_TOKENS; returns (first token s, total s, tokens)."""
    started = time.perf_counter()
    first_token = 0.0
    tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=ANSWER_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if not first_token and any(choice.delta.content for choice in chunk.choices):
            first_token = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first_token, time.perf_counter() - started, tokens


async def _longest_stall(stalls: list[float]) -> None:
    """Records in stalls[0] the longest the event loop went without running this task."""
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        stalls[0] = max(stalls[0], now - last - 0.005)
        last = now


async def main(model_path: Path | None, parallel: int) -> None:
    stalls = [0.0]
    watcher = asyncio.create_task(_longest_stall(stalls))
    await asyncio.sleep(0)
    started = time.perf_counter()
    async with LocalModelServer.start(model_path, parallel=parallel) as server:
        cold_start = time.perf_counter() - started
        watcher.cancel()
        print(f"model            {server.model.describe()}")
        print(f"cold start       {cold_start:.2f} s (start() until /health answers 200)")
        print(f"event loop stall {stalls[0] * 1000:.0f} ms during start (the load holds the GIL)")
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="unused", timeout=300, max_retries=0
        ) as client:
            await _answer(client, server.model_name)  # warms the prompt path
            first, total, tokens = await _answer(client, server.model_name)
            print(f"first token      {first * 1000:.0f} ms (one request)")
            print(f"speed            {tokens / (total - first):.1f} tokens/s ({tokens} tokens)")

            began = time.perf_counter()
            results = await asyncio.gather(
                *(_answer(client, server.model_name) for _ in range(parallel))
            )
            wall = time.perf_counter() - began
            firsts = sorted(first for first, _, _ in results)
            all_tokens = sum(tokens for _, _, tokens in results)
            print(
                f"{parallel} at once        first token {firsts[0] * 1000:.0f}-"
                f"{firsts[-1] * 1000:.0f} ms, {all_tokens / wall:.1f} tokens/s in total, "
                f"{all_tokens / wall / parallel:.1f} per answer"
            )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    print(f"peak RSS         {peak_rss * scale / 2**20:.0f} MiB (whole process)")
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a GGUF file; default SmolLM2")
    parser.add_argument("--parallel", type=int, default=4, help="slots, and answers at once")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.model, arguments.parallel))
