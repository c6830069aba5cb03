"""Prompt text for one (user, candidate item) pair, within a token budget (pure).

Layout::

    The user's history (oldest first):
    - liked: <item text>
    - disliked: <item text>
    ...
    So far the user liked 12 of 20 items.
    Similar users: 7 of 10 similar users who reacted to it liked it.
    Candidate: <item text>
    So far 31 of 52 users who reacted to the candidate liked it.
    Will the user like the candidate? Answer:

Without neighbours (the no-RAG ablation, or a neighbour-free degraded request) the "Similar users" line is
omitted; a user with no history gets "The user has no history yet." in place of the list and no "So far" line.
The "So far" line counts all the user's reactions (distinct items, the latest reaction per item), not only the
listed ones: the user's click rate, which the history lines alone cannot carry within a small budget. The
candidate's line (every user's reactions to the item so far, from the item payload) is there for every user,
cold or not: a user with no history still gets item-level evidence; an item nobody reacted to yet gets
"Nobody has reacted to the candidate yet.". ``item_rate=None`` (the text-only ablation, or an item whose payload
could not be read) omits the line.

``affinity`` (the cosine of the user's and the candidate's LightGCN vectors), ``graph_match``, ``surprise`` and
``brand_rate`` are not rendered: they reach the model as numbers (:mod:`scorer.features`), as do the counts above;
``graph_vectors`` (the two LightGCN vectors themselves) reach a model with a graph token as its input
(:mod:`scorer.model`).

Truncation order when the text exceeds ``budget`` tokens: (1) history lines are dropped oldest first, down to
none; (2) the candidate's text is cut (by words, from the end) down to one word; (3) if the fixed lines alone
still exceed the budget, :class:`PromptTooLong` is raised (the budget is misconfigured, not the request).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

HEADER = "The user's history (oldest first):"
NO_HISTORY = "The user has no history yet."
QUESTION = "Will the user like the candidate? Answer:"


class PromptTooLong(ValueError):
    """Even with no history and a one-word candidate the prompt exceeds the token budget."""


@dataclass(frozen=True)
class NeighbourEvidence:
    """How the retrieved similar users reacted to the candidate."""

    liked: int
    disliked: int

    @property
    def reacted(self) -> int:
        return self.liked + self.disliked


@dataclass(frozen=True)
class PromptInputs:
    target: str
    history: Sequence[tuple[str, int]] = field(default_factory=tuple)  # (item text, label), oldest first
    neighbours: NeighbourEvidence | None = None
    rate: tuple[int, int] | None = None  # (liked, reacted) over all the user's reactions
    item_rate: tuple[int, int] | None = None  # (liked, reacted) over all reactions the candidate received
    affinity: float | None = None  # cosine of the user's and the candidate's LightGCN vectors (None: one lacks one)
    # mean cosine of the candidate's LightGCN vector with the user's recently liked / disliked items' (None: none)
    graph_match: tuple[float | None, float | None] | None = None
    # per recent reaction of the user: (label, the item's likes and reactions from everyone else), for the surprise
    surprise: tuple[tuple[int, int, int], ...] | None = None
    # (liked, reacted) of the user's latest reactions to items of the candidate's brand (None: brand unknown)
    brand_rate: tuple[int, int] | None = None
    # the user's and the candidate's LightGCN vectors (None: it has none), for a model's graph token
    graph_vectors: tuple[Sequence[float] | None, Sequence[float] | None] | None = field(default=None, compare=False)

    @property
    def new_user(self) -> bool:
        """No reaction of the user is known yet: a new user's first impression (a cold row)."""
        return self.rate is None or self.rate[1] == 0


def neighbour_line(evidence: NeighbourEvidence) -> str:
    if evidence.reacted == 0:
        return "Similar users: none of the similar users has reacted to it yet."
    return (f"Similar users: {evidence.liked} of {evidence.reacted} similar users who reacted to it "
            f"liked it.")


def render(inputs: PromptInputs, history: Sequence[tuple[str, int]], target: str) -> str:
    lines = [HEADER] if history else [NO_HISTORY]
    lines += [history_line(text, label) for text, label in history]
    if inputs.rate is not None and inputs.rate[1] > 0:
        lines.append(f"So far the user liked {inputs.rate[0]} of {inputs.rate[1]} items.")
    if inputs.neighbours is not None:
        lines.append(neighbour_line(inputs.neighbours))
    lines.append(f"Candidate: {target}")
    if inputs.item_rate is not None:
        lines.append(item_line(*inputs.item_rate))
    lines.append(QUESTION)
    return "\n".join(lines)


def item_line(liked: int, reacted: int) -> str:
    if reacted == 0:
        return "Nobody has reacted to the candidate yet."
    return f"So far {liked} of {reacted} users who reacted to the candidate liked it."


def build_prompt(inputs: PromptInputs, count_tokens: Callable[[str], int], budget: int) -> str:
    """The prompt for ``inputs`` with at most ``budget`` tokens as counted by ``count_tokens``."""
    history = list(inputs.history)
    # drop history oldest first (binary search on how many of the newest lines fit)
    lo, hi = 0, len(history)
    while lo < hi:
        keep = (lo + hi + 1) // 2
        if count_tokens(render(inputs, history[-keep:], inputs.target)) <= budget:
            lo = keep
        else:
            hi = keep - 1
    history = history[len(history) - lo:]
    text = render(inputs, history, inputs.target)
    if count_tokens(text) <= budget:
        return text
    words = inputs.target.split()
    while len(words) > 1:
        words = words[:-1]
        text = render(inputs, history, " ".join(words))
        if count_tokens(text) <= budget:
            return text
    raise PromptTooLong(f"the fixed prompt lines alone need {count_tokens(text)} tokens; budget is {budget}")


def history_line(text: str, label: int) -> str:
    return f"- {'liked' if label == 1 else 'disliked'}: {text}"


def build_prompts(batch: Sequence[PromptInputs], count_many: Callable[[list[str]], list[int]], budget: int,
                  fallback: Callable[[PromptInputs], str]) -> list[str]:
    r""":func:`build_prompt` for a whole batch with the tokenizer called a few times per batch, not ~5 times per
    row (the binary search re-tokenizes the whole prompt at every step).

    ``count_many(texts)`` gives each text's token count as :func:`build_prompt`'s ``count_tokens`` would (special
    tokens included). Every distinct history line is counted once; a row's count with its newest ``k`` lines is
    estimated as :math:`n(\text{no history}) - n(\text{no-history line}) + n(\text{header}) + \sum n(\text{line})`
    (each line's :math:`n` without the special tokens): exact for tokenizers whose pre-tokenizer splits on
    whitespace (WordPiece: MiniLM), an estimate otherwise (byte-level BPE may merge a newline). The largest ``k``
    whose estimate fits is then checked against the real counts: the prompt with ``k`` lines fits and the one
    with ``k + 1`` does not. Counts grow with ``k``, so a row that passes gets exactly :func:`build_prompt`'s
    text; a row that fails, or whose fixed lines alone do not fit, gets ``fallback(row)``."""
    lines = [[history_line(text, label) for text, label in x.history] for x in batch]
    distinct = list(dict.fromkeys(line for row in lines for line in row))
    bare = [render(x, (), x.target) for x in batch]
    counted = count_many(["", HEADER, NO_HISTORY, *distinct, *bare])
    special, header, no_history = counted[0], counted[1] - counted[0], counted[2] - counted[0]
    per_line = dict(zip(distinct, (n - special for n in counted[3:3 + len(distinct)]), strict=True))
    keep = []
    for row, fixed in zip(lines, counted[3 + len(distinct):], strict=True):
        k, total = 0, fixed - no_history + header
        for line in reversed(row):
            total += per_line[line]
            if total > budget:
                break
            k += 1
        keep.append(k)
    texts = [render(x, x.history[len(x.history) - k:] if k else (), x.target) for x, k in zip(batch, keep,
                                                                                                 strict=True)]
    fits = [n <= budget for n in count_many(texts)]
    more = [j for j, (x, k) in enumerate(zip(batch, keep, strict=True)) if fits[j] and k < len(x.history)]
    longer = count_many([render(batch[j], batch[j].history[len(batch[j].history) - keep[j] - 1:], batch[j].target)
                         for j in more])
    for j, n in zip(more, longer, strict=True):
        fits[j] = n > budget
    return [text if ok else fallback(x) for x, text, ok in zip(batch, texts, fits, strict=True)]
