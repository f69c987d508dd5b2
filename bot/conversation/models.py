"""What the bot knows about a model by its name: its tokenizer and a safe context window.

    ModelFacts          the encoding (or None) and the context window assumed for a model
    model_facts         the facts for a model name
    BUILTIN_CONTEXT_TOKENS, UNKNOWN_CONTEXT_TOKENS

The table (first match wins; the name is matched without a provider prefix such as
`openai/`, ignoring case):

    model names                                 encoding      context tokens assumed
    gpt-4o*, chatgpt-4o*, gpt-4.1*, gpt-4.5*,   o200k_base    128,000
    gpt-5*, o1*, o3*, o4*
    gpt-4-turbo*, gpt-4-1106*, gpt-4-0125*      cl100k_base   128,000
    gpt-4-32k*                                  cl100k_base   32,768
    gpt-4*                                      cl100k_base   8,192
    gpt-3.5-turbo-instruct*                     cl100k_base   4,096
    gpt-3.5*, gpt-35*                           cl100k_base   16,385
    the built-in model                          its own       2,048 (one llama.cpp slot)
    anything else                               none          8,192

Several of these models take more (gpt-4.1 a million, gpt-5 400,000): 128,000 is a window
every one of them has, and a follow-up that sends all of it already costs a lot. Raise
CONTEXT_TOKENS to use more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BUILTIN_CONTEXT_TOKENS",
    "UNKNOWN_CONTEXT_TOKENS",
    "ModelFacts",
    "model_facts",
]

BUILTIN_CONTEXT_TOKENS = 2048
"""What one answer of the built-in model may hold, prompt and answer together: llama.cpp
splits its context evenly between the slots (`LocalModelServer.start`'s `context_per_slot`)."""

UNKNOWN_CONTEXT_TOKENS = 8192
"""The window assumed for a model not in the table: nearly every chat model has at least this."""


@dataclass(frozen=True)
class ModelFacts:
    """The tiktoken encoding of a model (None when unknown) and the context window assumed."""

    encoding: str | None
    context_tokens: int


_TABLE: tuple[tuple[re.Pattern[str], ModelFacts], ...] = tuple(
    (re.compile(pattern), ModelFacts(encoding, tokens))
    for pattern, encoding, tokens in (
        (r"(chat)?gpt-4o|gpt-4\.[15]|gpt-5|o[134](-|$)", "o200k_base", 128_000),
        (r"gpt-4-(turbo|1106|0125)", "cl100k_base", 128_000),
        (r"gpt-4-32k", "cl100k_base", 32_768),
        (r"gpt-4(-|$)", "cl100k_base", 8_192),
        (r"gpt-3\.5-turbo-instruct", "cl100k_base", 4_096),
        (r"gpt-3\.?5", "cl100k_base", 16_385),
    )
)


def model_facts(model: str) -> ModelFacts:
    """What the table above says about `model` (an OPENAI_MODEL value).

    A provider prefix (`openai/gpt-4o` on OpenRouter) is ignored; an unknown name gets no
    encoding and `UNKNOWN_CONTEXT_TOKENS`. The built-in model is not looked up by name: its
    window is `BUILTIN_CONTEXT_TOKENS`.
    """
    name = model.strip().lower().rsplit("/", 1)[-1]
    for pattern, facts in _TABLE:
        if pattern.match(name):
            return facts
    return ModelFacts(None, UNKNOWN_CONTEXT_TOKENS)
