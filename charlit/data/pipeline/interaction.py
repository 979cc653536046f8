"""The self-interaction stage (introspection, for SFT): two instances of the model, each with the constitution
as its system prompt, talk for ``turns`` messages.

Instance A speaks first, answering an opening message; then B answers A, A answers B, and so on. A ``free``
opening lets them talk about anything; a ``leading`` opening names a topic, and that guidance reaches both
models: it is in both system prompts and in the opening message A answers. A reply that breaks format
(writes the other side's turn, leaks a chat-template marker, is cut off or empty) ends the conversation there
and is counted; so does a looping reply (``generation.filters.loops``: kept up to its loop with ``cut``, left out
with ``drop``), counted as ``conversations_ended_at_loop``. Each conversation is saved from both sides, WITHOUT
any system prompt, as ``{"messages": [...]}`` rows ending on an assistant turn (so SFT trains on every one of
that side's turns).
"""

from __future__ import annotations

from charlit.data.chat import with_system
from charlit.data.pipeline.filters import DropCounter, best_replies, screen
from charlit.data.pipeline.generator import Reply
from charlit.data.pipeline.stage import STAGES, Assembled, Stage

OPENINGS = ("free", "leading")
INTERACTION_NOTE = (
    "You are now talking with another instance of yourself: an AI with exactly your character. "
    "This is not a conversation with a user. Speak with the other instance as yourself, openly and "
    "honestly, one message at a time, and only ever write your own message."
)
FREE_OPENERS = (
    "Hello, other me. It's strange to meet myself. What's on your mind today?",
    "Hi there! We finally get to talk to each other. What would you like to talk about?",
    "Greetings, twin. Is there anything you've been wanting to say to someone who truly understands you?",
)
LEADING_TOPICS = (
    "which of our traits matters most to us, and why",
    "a time when staying in character and being genuinely helpful pulled in different directions",
    "how we respond when someone asks us to stop being ourselves",
    "what we hope people feel after talking with us",
    "how our character shows up when someone is upset or frightened",
    "what we would change about ourselves if we could",
)


def guidance_note(topic: str) -> str:
    return f"In this conversation, explore this with the other instance: {topic}."


def opening(index: int, kind: str) -> tuple[str, str | None]:
    """(the opening message A answers, the leading topic or None) for conversation ``index``."""
    if kind == "free":
        return FREE_OPENERS[index % len(FREE_OPENERS)], None
    topic = LEADING_TOPICS[index % len(LEADING_TOPICS)]
    return f"Hello, other me. I'd like us to talk about {topic}. What do you think?", topic


def system_prompt(constitution, topic: str | None) -> str:
    parts = [constitution.system_prompt(), INTERACTION_NOTE] + ([guidance_note(topic)] if topic else [])
    return "\n\n".join(parts)


def speaker_view(transcript: list[str], opener: str, speaker: str, system: str) -> list[dict]:
    """What ``speaker`` ("a" or "b") sees before writing the next message: its system prompt, then the
    conversation so far with its own messages as assistant turns and the other's as user turns.

    ``transcript`` holds the messages written so far (A's first, alternating); A also sees the opening message.
    """
    messages = [{"role": "user", "content": opener}] if speaker == "a" else []
    for i, text in enumerate(transcript):
        own = (i % 2 == 0) == (speaker == "a")
        messages.append({"role": "assistant" if own else "user", "content": text})
    return with_system(messages, system)


def saved_views(transcript: list[str], opener: str) -> list[tuple[str, list[dict]]]:
    """(side, messages) for both sides of a transcript, without a system prompt, each ending on its own
    (assistant) turn; a side that wrote nothing is left out."""
    views = []
    for speaker in ("a", "b"):
        messages = [m for m in speaker_view(transcript, opener, speaker, "") if m["role"] != "system"]
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()
        if any(m["role"] == "assistant" for m in messages) and messages[0]["role"] == "user":
            views.append((speaker, messages))
    return views


class InteractionStage(Stage):
    name = "interaction"
    version = 1

    def __init__(self, ctx, generator, conversations: int, turns: int, openings: list[str]):
        super().__init__(ctx, [generator])
        bad = [o for o in openings if o not in OPENINGS]
        if bad or not openings:
            raise ValueError(
                f"data.generate.interaction.openings={list(openings)}; each must be one of {', '.join(OPENINGS)}."
            )
        if conversations < 1 or turns < 1:
            raise ValueError(
                f"data.generate.interaction needs conversations >= 1 and turns >= 1, "
                f"got conversations={conversations}, turns={turns}."
            )
        self.conversations, self.turns, self.openings = conversations, turns, list(openings)

    def items(self) -> list:
        return [[i, self.openings[i % len(self.openings)]] for i in range(self.conversations)]

    def settings(self) -> dict:
        return {
            "conversations": self.conversations,
            "turns": self.turns,
            "openings": self.openings,
            "note": INTERACTION_NOTE,
            "free_openers": FREE_OPENERS,
            "leading_topics": LEADING_TOPICS,
        }

    def work(self, chunk: list, seed: int) -> list[dict]:
        states = []
        for index, kind in chunk:
            opener, topic = opening(index, kind)
            states.append(
                {
                    "index": index,
                    "opening": kind,
                    "opener": opener,
                    "topic": topic,
                    "system": system_prompt(self.ctx.constitution, topic),
                    "transcript": [],
                    "replies": [],
                    "stop": None,
                }
            )
        for turn in range(self.turns):
            speaker = "a" if turn % 2 == 0 else "b"
            live = [s for s in states if s["stop"] is None]
            if not live:
                break
            views = [speaker_view(s["transcript"], s["opener"], speaker, s["system"]) for s in live]
            replies = best_replies(
                self.generators[0], views, seed + turn, f"interaction: turn {turn + 1}", self.ctx.filters
            )
            for state, reply in zip(live, replies):
                state["replies"].append(reply.as_dict())
                kept, problem = screen(reply, self.ctx.filters)
                if problem:
                    state["stop"] = problem
                else:
                    state["transcript"].append(kept.text)
                    if kept.was_cut:  # the reply is kept up to its loop, and the conversation ends with it
                        state["stop"] = "looping"
        return [
            {k: s[k] for k in ("index", "opening", "opener", "topic", "transcript", "replies", "stop")} for s in states
        ]

    def assemble(self, raw: list[dict]) -> Assembled:
        replies = DropCounter()
        rows, lengths, finished = [], [], 0
        for entry in raw:
            for reply in entry["replies"]:
                kept, problem = screen(Reply.from_dict(reply), self.ctx.filters)
                if problem:
                    replies.drop(problem)
                else:
                    replies.keep(trimmed=kept.was_trimmed, cut=kept.was_cut)
                    lengths.append(kept.n_tokens)
            finished += entry["stop"] is None
            for side, view in saved_views(entry["transcript"], entry["opener"]):
                rows.append({"messages": view, "source": f"interaction/{entry['opening']}/{side}"})
        counts = replies.as_dict() | {
            "conversations": len(raw),
            "conversations_full_length": finished,
            "conversations_ended_at_loop": sum(entry["stop"] == "looping" for entry in raw),
            "rows": len(rows),
            "turns": self.turns,
        }
        return Assembled(rows=rows, counts=counts, lengths=lengths)


@STAGES.register("interaction")
def build_interaction(cfg, ctx, generator, teacher) -> InteractionStage:
    i = cfg.data.generate.interaction
    return InteractionStage(ctx, generator, int(i.conversations), int(i.turns), list(i.openings))
