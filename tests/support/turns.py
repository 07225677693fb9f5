"""What the scripted model servers share: which turn of a conversation a request is in.

A resumed agent session resends the earlier turns, so a scripted server decides "tool call or
final answer" from the history after the last user prompt only, and ``turns`` scripts each
prompt: entry N-1 is the ``(command, final_text)`` of the Nth prompt in the conversation;
prompts past the list use the server's ``command`` and ``final_text``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def current_turn(
    history: Sequence[T],
    is_prompt: Callable[[T], bool],
    turns: Sequence[tuple[str, str]],
    default: tuple[str, str],
) -> tuple[tuple[str, str], Sequence[T]]:
    """This turn's ``(command, final_text)`` and the history since its prompt."""
    prompts = [index for index, entry in enumerate(history) if is_prompt(entry)]
    script = turns[len(prompts) - 1] if 0 < len(prompts) <= len(turns) else default
    return script, history[prompts[-1] + 1 :] if prompts else history
