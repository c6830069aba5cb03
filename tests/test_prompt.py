from pathlib import Path

import numpy as np
import pytest

from scorer.prompt import NO_HISTORY, NeighbourEvidence, PromptInputs, PromptTooLong, build_prompt, build_prompts


def words(text: str) -> int:
    return len(text.split())


HISTORY = [(f"Book {k} by Someone", k % 2) for k in range(30)]  # oldest first


def test_full_prompt_when_it_fits():
    inputs = PromptInputs("The Hobbit by Tolkien", HISTORY[:3], NeighbourEvidence(liked=7, disliked=3), (12, 20),
                          (31, 52), affinity=0.4)
    text = build_prompt(inputs, words, budget=10_000)
    assert text.splitlines() == [
        "The user's history (oldest first):",
        "- disliked: Book 0 by Someone",
        "- liked: Book 1 by Someone",
        "- disliked: Book 2 by Someone",
        "So far the user liked 12 of 20 items.",
        "Similar users: 7 of 10 similar users who reacted to it liked it.",
        "Candidate: The Hobbit by Tolkien",
        "So far 31 of 52 users who reacted to the candidate liked it.",
        "Will the user like the candidate? Answer:",
    ]
    assert "0.4" not in text  # the affinity reaches the heads as a number, not as text


def test_history_is_dropped_oldest_first_to_fit_the_budget():
    inputs = PromptInputs("The Hobbit by Tolkien", HISTORY, NeighbourEvidence(1, 1), (15, 30))
    full = build_prompt(inputs, words, 10_000)
    budget = words(full) - 5 * 5  # five history lines of 5 words each must go
    text = build_prompt(inputs, words, budget)
    assert words(text) <= budget
    kept = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(kept) == 25 and kept[0].endswith("Book 5 by Someone") and kept[-1].endswith("Book 29 by Someone")
    assert "So far the user liked 15 of 30 items." in text  # the rate line is never dropped


def test_candidate_text_is_cut_after_history_is_gone_and_then_it_fails():
    inputs = PromptInputs("A Very Long Title With Many Many Words In It", HISTORY)
    fixed = words(build_prompt(PromptInputs("A"), words, 10_000))
    text = build_prompt(inputs, words, fixed + 2)
    assert "- " not in text and "Candidate: A Very Long" in text
    with pytest.raises(PromptTooLong):
        build_prompt(inputs, words, fixed - 1)


def test_no_rag_and_cold_user_variants():
    no_rag = build_prompt(PromptInputs("X", HISTORY[:2]), words, 1000)
    assert "Similar users" not in no_rag
    cold = build_prompt(PromptInputs("X", (), NeighbourEvidence(0, 0), (0, 0)), words, 1000)
    assert cold.startswith(NO_HISTORY) and "none of the similar users" in cold and "So far" not in cold


def test_cold_user_still_gets_the_candidates_evidence():
    cold = build_prompt(PromptInputs("X", (), None, None, (3, 4)), words, 1000)
    assert cold.splitlines() == [NO_HISTORY, "Candidate: X",
                                 "So far 3 of 4 users who reacted to the candidate liked it.",
                                 "Will the user like the candidate? Answer:"]
    unknown = build_prompt(PromptInputs("X", (), None, None, (0, 0)), words, 1000)
    assert "Nobody has reacted to the candidate yet." in unknown
    assert "candidate liked" not in build_prompt(PromptInputs("X"), words, 1000)  # text-only view: no line


def batch_of_prompt_inputs(item_texts: list[str], n: int, seed: int = 0) -> list[PromptInputs]:
    """Rows of every shape: histories of 0-30 lines, long and one-word candidates, with and without evidence."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        history = [(item_texts[j], int(rng.integers(2))) for j in rng.integers(len(item_texts), size=k % 31)]
        target = " ".join(item_texts[j] for j in rng.integers(len(item_texts), size=1 + (k % 7 == 0) * 12))
        rows.append(PromptInputs(target, history, NeighbourEvidence(k % 5, k % 3) if k % 4 else None,
                                 (k % 9, k % 9 + 3) if k % 3 else None, (k, 2 * k) if k % 5 else None))
    return rows


def test_batched_prompts_are_the_binary_searched_ones_with_a_real_tokenizer_and_an_estimate_that_misses():
    from transformers import AutoTokenizer

    from scorer import backbones

    tokenizer = AutoTokenizer.from_pretrained(str(backbones.resolve("minilm", Path("."))))
    calls = []

    def count(text: str) -> int:
        return len(tokenizer(text).input_ids)

    def count_many(texts: list[str]) -> list[int]:
        calls.append(len(texts))
        return [len(ids) for ids in tokenizer(texts).input_ids] if texts else []

    titles = [f"Book {k}: The {'Long ' * (k % 4)}Story of Someone's Adventures (vol. {k})" for k in range(40)]
    rows = batch_of_prompt_inputs(titles, 120)

    def fallback(x: PromptInputs) -> str:
        try:
            return build_prompt(x, count, 96)
        except PromptTooLong:
            return "too long"

    expected = [fallback(x) for x in rows]
    assert build_prompts(rows, count_many, 96, fallback) == expected
    assert len(calls) == 3  # lines and bare prompts, the fits, the one-line-longer checks: per batch, not per row
    assert sum("- " in t for t in expected) > 30 and sum(t.startswith(NO_HISTORY) for t in expected) > 3
    assert any("Candidate:" in t and "- " not in t and t.count("\n") for t in expected)  # history dropped to none

    # a count that is not additive over lines (a newline costs a token, as byte-level BPE may make it): the
    # estimate is off, the check catches every row it got wrong, and the result is still the searched one
    def merged(text: str) -> int:
        return words(text) + text.count("\n")

    def merged_many(texts: list[str]) -> list[int]:
        return [merged(t) for t in texts]

    fell_back = []

    def merged_fallback(x: PromptInputs) -> str:
        fell_back.append(x)
        try:
            return build_prompt(x, merged, 60)
        except PromptTooLong:
            return "too long"

    got = build_prompts(rows, merged_many, 60, merged_fallback)
    assert 0 < len(fell_back) < len(rows)
    assert got == [merged_fallback(x) for x in rows]
