"""The turns of a conversation and what a store of them must do.

    TurnId              a turn's id: an integer, never reused, fit for a custom_id
    NewTurn             a turn as the bot saves it, before it has an id
    Turn                a saved turn
    ConversationStore   what a store of turns must do (a Protocol):
                        `bot.store.sqlite.SqliteConversationStore` for one machine,
                        `bot.store.redis.RedisConversationStore` for every process
    may_continue        whether a person may continue the conversation at a turn

A conversation is the chain of turns the bot answered: a fresh `/ask` is a root (no parent);
each follow-up names the turn it continues as its parent. Answers are found again by the
Discord ids of the messages they were posted in, so a reply to any message of an answer, or
a button carrying the turn's id, finds its place in the chain. Replying to an older answer
starts a branch from there: the chain is always walked from a turn up to its root.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

__all__ = ["ConversationStore", "NewTurn", "Turn", "TurnId", "may_continue"]

TurnId = int
"""A turn's id: a positive integer, at most 19 digits, so `f"followup:{turn_id}"` fits a
custom_id easily. A store never hands out the same id twice, not even after the turn was
deleted, so an old button can never lead to somebody else's later conversation."""


@dataclass(frozen=True)
class NewTurn:
    """One question and its answer, as the bot saves them.

    `user_id` and `display_name` are the asker's (the name as shown where they asked, used to
    label their words for the model); `guild_id` is None in direct messages; `private` is
    True for an ephemeral answer. `prompt` is what they asked (the first `/ask` prompt exists
    nowhere in Discord, so it must be kept) and `answer` what the bot answered, with
    `model` the model that wrote it. `prompt_tokens` and `answer_tokens` are the two as the
    model receives them, framing included (see `bot.conversation.context.count_turn`):
    counted once here, so building a context later needs no counting. `parent_id` is the turn
    this one continues, None for a fresh `/ask`. `created_at` must carry a time zone.
    """

    user_id: int
    display_name: str
    guild_id: int | None
    channel_id: int
    private: bool
    prompt: str
    answer: str
    model: str
    prompt_tokens: int
    answer_tokens: int
    parent_id: TurnId | None
    created_at: datetime

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError("created_at must carry a time zone")
        if self.prompt_tokens < 0 or self.answer_tokens < 0:
            raise ValueError("token counts must be 0 or more")


@dataclass(frozen=True)
class Turn(NewTurn):
    """A saved turn: a `NewTurn` with the id its store gave it.

    `parent_id` is None for a root, and also once the parent was deleted (forgotten or pruned):
    the conversation then starts at this turn.
    """

    id: TurnId = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.id < 1:
            raise ValueError(f"a saved turn has an id of at least 1 (got {self.id})")


def may_continue(turn: Turn, user_id: int) -> bool:
    """Whether `user_id` may ask a follow-up at `turn`.

    Anyone who can see a public answer may continue it (their own turns are labelled with
    their name for the model); a private answer only by the person it answered. A follow-up
    to a private turn is private too, so a public chain never holds anyone's private turn.
    """
    return not turn.private or turn.user_id == user_id


class ConversationStore(Protocol):
    """The turns of every conversation, found by turn id or by the ids of answer messages.

    Every write is atomic, and concurrent saves, from this process or from others sharing the
    store, never lose a turn or give two turns one id. Ids only grow: a parent's id is always
    smaller than its children's, so a chain can never loop.

    Deleting a turn (`forget_user`, `prune`) deletes its prompt, its answer and its message
    ids; the turns hanging below it by other people stay, each child becoming the start of its
    own conversation (`parent_id` None). A chain therefore stops cleanly where something was
    deleted and never reaches past it; `chain` also stops at any parent it cannot find.

    `bot.store.redis` keeps it in Redis for every process of the bot, each call one Lua
    script or one command; its docstring lists the keys.
    """

    async def save(self, turn: NewTurn, message_ids: Sequence[int] = ()) -> Turn:
        """Store `turn` with the ids of the messages its answer is already in; return it
        with its new id.

        If the parent no longer exists (forgotten or pruned meanwhile) the turn is saved as
        the start of a new conversation and the returned turn's `parent_id` is None. A
        message id already given to another turn stays with that turn.
        """
        ...

    async def add_messages(self, turn_id: TurnId, message_ids: Sequence[int]) -> bool:
        """Record more messages of a turn's answer, e.g. those posted after it was saved.

        An answer is saved once its text is final, which is before its last message is sent
        or edited (the last message carries the turn's Follow up button), so the ids of
        messages sent after that arrive here. Returns False, adding nothing, when the turn is
        gone (forgotten or pruned). Adding an id twice is harmless.
        """
        ...

    async def turn(self, turn_id: TurnId) -> Turn | None:
        """The turn with this id, or None if there is none (any more)."""
        ...

    async def turn_for_message(self, message_id: int) -> Turn | None:
        """The turn whose answer was posted in message `message_id`, or None."""
        ...

    async def chain(self, turn_id: TurnId, max_turns: int) -> list[Turn]:
        """The conversation up to and including `turn_id`, oldest first, following parents.

        At most the newest `max_turns` (at least 1) are returned: from the root when the
        chain is shorter, else from the turn `max_turns - 1` above `turn_id`. Empty when
        `turn_id` does not exist.
        """
        ...

    async def forget_user(self, user_id: int) -> int:
        """Delete every turn this person asked (their prompts and the answers to them, with
        the answers' message ids); return how many turns were deleted.

        Other people's turns below theirs stay, each becoming the start of a conversation.
        """
        ...

    async def prune(self, older_than: datetime) -> int:
        """Delete every turn created before `older_than` (an aware time); return how many.

        Newer turns below them stay, each becoming the start of a conversation.
        """
        ...

    async def close(self) -> None:
        """Release the store's resources; only another `close` may follow."""
        ...
