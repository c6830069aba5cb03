import pytest

from scorer.prompt import NO_HISTORY, NeighbourEvidence, PromptInputs, PromptTooLong, build_prompt


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
