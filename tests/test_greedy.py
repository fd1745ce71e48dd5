from cotprune.pruning.greedy import published_tokens


def published_sequences(prompt: int, n: int, answer: int, deletions: int) -> list[int]:
    """Lengths of the sequences the published algorithm forwards: every remaining candidate's
    deletion as a whole new sequence, step after step (which token goes does not matter)."""
    cot, lengths = list(range(n)), []
    for _ in range(deletions):
        lengths += [prompt + len(cot) - 1 + answer for _ in cot]
        cot.pop(len(cot) // 2)
    return lengths


def test_published_tokens_counts_every_candidate_sequence_of_every_step():
    for prompt, n, answer, deletions in [(5, 7, 3, 4), (1, 1, 1, 1), (12, 30, 4, 15), (3, 4, 2, 0)]:
        assert published_tokens(prompt, n, answer, deletions) == sum(
            published_sequences(prompt, n, answer, deletions))


def test_published_tokens_stops_when_the_cot_is_gone():
    assert published_tokens(5, 3, 2, 10) == published_tokens(5, 3, 2, 3)
