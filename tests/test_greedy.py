import pytest
from greedy_reference import full_objective

from cotprune.core.deletion import DeletionScorer
from cotprune.core.models import ModelOptions, load_model
from cotprune.data.layout import ChainLayout
from cotprune.errors import InputError
from cotprune.pruning.greedy import GreedyOptions, greedy_prune, prior_shortlist, published_tokens


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


# --- greedy with a learned prior -----------------------------------------------------------

COT = "First 12 minus 5 is 7. Then 7 times 2 is 14, check: 14/2=7."


@pytest.fixture(scope="module")
def tiny_chain(tiny_gpt2_model):
    model, tok = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu"))
    cl = ChainLayout(tok)
    return model, cl.prompt_ids("What is it?"), cl.cot_ids(COT), cl.answer_ids("7")


def position_prior(cot: list[int]) -> list[float]:
    """A prior that ranks later tokens first for deletion."""
    return [-float(k) for k in range(len(cot))]


def test_prior_with_a_shortlist_of_every_candidate_is_exact_greedy(tiny_chain):
    model, prompt, cot, answer = tiny_chain
    exact = greedy_prune(DeletionScorer(model, "reason-answer", 96), prompt, cot, answer, 6)
    guided = greedy_prune(DeletionScorer(model, "reason-answer", 96), prompt, cot, answer, 6,
                          opts=GreedyOptions(shortlist=len(cot)), prior=position_prior)
    assert guided.order == exact.order
    assert guided.trace == pytest.approx(exact.trace, abs=1e-4)


def test_prior_shortlist_deletes_the_best_of_the_prior_picks(tiny_chain):
    """Each step deletes the candidate of least J among the prior's M picks (plus the last
    deletion's neighbours), J from a full recompute, and never looks at the others."""
    model, prompt, cot, answer = tiny_chain
    size, deletions = 3, 5
    scorer = DeletionScorer(model, "reason-answer", 96)
    traj = greedy_prune(scorer, prompt, cot, answer, deletions,
                        opts=GreedyOptions(shortlist=size), prior=position_prior)
    positions, last = list(range(len(cot))), None
    for gone, j in zip(traj.order, traj.trace, strict=True):
        near = set() if last is None else {last - 1, last}
        picks = prior_shortlist(position_prior(positions), list(range(len(positions))), near,
                                size)
        js = {k: full_objective(model, [*prompt, *[cot[i] for i in positions[:k]],
                                        *[cot[i] for i in positions[k + 1:]], *answer],
                                len(prompt)) for k in picks}
        best = min(picks, key=lambda k: (js[k], k))
        assert positions[best] == gone and js[best] == pytest.approx(j, abs=1e-3)
        last = best
        del positions[best]
    exact_scorer = DeletionScorer(model, "reason-answer", 96)
    greedy_prune(exact_scorer, prompt, cot, answer, deletions)
    assert scorer.work.tokens_run < exact_scorer.work.tokens_run


def test_prior_needs_a_shortlist(tiny_chain):
    model, prompt, cot, answer = tiny_chain
    with pytest.raises(InputError, match="--shortlist"):
        greedy_prune(DeletionScorer(model, "reason-answer", 96), prompt, cot, answer, 2,
                     prior=position_prior)
