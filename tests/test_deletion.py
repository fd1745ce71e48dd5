import pytest
from greedy_reference import full_objective, per_target_nll, reference_greedy

import cotprune.core.deletion as deletion
from cotprune.core.deletion import ChainState, DeletionScorer
from cotprune.core.models import ModelOptions, load_model
from cotprune.core.rows import first_of_run, kv_bytes
from cotprune.data.layout import ChainLayout
from cotprune.pruning.greedy import (
    GreedyOptions,
    corrected_stale,
    greedy_prune,
    kept_positions,
)

COTS = ["We add 3 and 4 to get 7, so it is seven.",
        "First 12 minus 5 is 7. Then 7 times 2 is 14, check: 14/2=7.",
        "So 7 7 7 and 100 is it."]  # runs of equal tokens: deleting any gives the same chain


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_model):
    return load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu"))


def _state(tok, cot, question="What is it?", answer="7"):
    cl = ChainLayout(tok)
    return ChainState(cl.prompt_ids(question), cl.cot_ids(cot), cl.answer_ids(answer))


@pytest.mark.parametrize("objective", ["reason-answer", "answer"])
@pytest.mark.parametrize("batch_tokens", [1, 4096])
def test_candidate_objectives_equal_full_recompute(tiny, objective, batch_tokens):
    model, tok = tiny
    state = _state(tok, COTS[1])
    base_j, js = DeletionScorer(model, objective, batch_tokens).candidate_objectives(state)
    assert base_j == pytest.approx(
        full_objective(model, state.ids, state.objective_start(objective)), abs=1e-3)
    assert sorted(js) == list(range(len(state.cot)))
    for k, j in js.items():
        s2 = ChainState(state.prompt, state.cot[:k] + state.cot[k + 1:], state.answer)
        assert j == pytest.approx(full_objective(model, s2.ids, s2.objective_start(objective)),
                                  abs=1e-3), k


@pytest.mark.parametrize("pack_tokens, lane_tokens", [(1, 128), (40, 128), (10**6, 128),
                                                     (10**6, 8)])
def test_packed_candidates_equal_full_recompute_for_any_pack_size(tiny, monkeypatch,
                                                                  pack_tokens, lane_tokens):
    """One candidate per forward, a few per pack, or all in one, in lanes that are full,
    padded or overlong: the same J (the 4D mask keeps the blocks of a pack apart)."""
    monkeypatch.setattr(deletion, "PACK_TOKENS", pack_tokens)
    monkeypatch.setattr(deletion, "LANE_TOKENS", lane_tokens)
    model, tok = tiny
    state = _state(tok, COTS[0])
    scorer = DeletionScorer(model, "reason-answer", 4096)
    _, js = scorer.candidate_objectives(state)
    for k, j in js.items():
        s2 = ChainState(state.prompt, state.cot[:k] + state.cot[k + 1:], state.answer)
        assert j == pytest.approx(full_objective(model, s2.ids, len(s2.prompt)), abs=1e-4), k


@pytest.mark.parametrize("checkpoints", [deletion.CHECKPOINTS, (6, 3)])  # bound checks
@pytest.mark.parametrize("objective", ["reason-answer", "answer"])
@pytest.mark.parametrize("cot", COTS)
def test_exact_greedy_order_equals_reference_algorithm(tiny, objective, cot, checkpoints):
    model, tok = tiny
    state = _state(tok, cot)
    deletions = len(state.cot) - 3
    ref_order, ref_trace = reference_greedy(model, state.prompt, state.cot, state.answer,
                                            deletions, objective)
    scorer = DeletionScorer(model, objective, 2048, checkpoints=checkpoints)
    traj = greedy_prune(scorer, state.prompt, state.cot, state.answer, deletions)
    assert traj.order == ref_order
    assert traj.trace == pytest.approx(ref_trace, abs=1e-3)


def test_protected_tokens_are_never_deleted_and_resume_continues(tiny):
    model, tok = tiny
    state = _state(tok, COTS[1])
    scorer = DeletionScorer(model, "reason-answer", 2048)
    n = len(state.cot)
    protected = frozenset(range(0, n, 3))
    full = greedy_prune(scorer, state.prompt, state.cot, state.answer, n, protected=protected)
    assert not set(full.order) & protected
    assert len(full.order) == n - len(protected)  # stops when only protected tokens remain
    saved = []
    part = greedy_prune(scorer, state.prompt, state.cot, state.answer, 4, protected=protected,
                        on_step=lambda t: saved.append(list(t.order)))
    assert saved[-1] == part.order == full.order[:4]
    resumed = greedy_prune(scorer, state.prompt, state.cot, state.answer, n,
                           protected=protected, start=part)
    assert resumed.order == full.order
    assert resumed.trace == pytest.approx(full.trace, abs=1e-4)


@pytest.mark.parametrize("opts", [GreedyOptions(per_step=3), GreedyOptions(shortlist=2,
                                                                              refresh_every=4)])
def test_approximate_modes_delete_the_requested_count(tiny, opts):
    model, tok = tiny
    state = _state(tok, COTS[1])
    deletions = len(state.cot) // 2
    traj = greedy_prune(DeletionScorer(model, "reason-answer", 2048), state.prompt, state.cot,
                        state.answer, deletions, opts=opts)
    assert len(traj.order) == deletions == len(set(traj.order))
    kept = [state.cot[i] for i in kept_positions(len(state.cot), traj.order,
                                                  len(state.cot) - deletions)]
    final = full_objective(model, [*state.prompt, *kept, *state.answer], len(state.prompt))
    assert traj.trace[-1] == pytest.approx(final, abs=1e-3)  # the trace is exact J


def test_second_call_on_the_same_chain_reuses_the_base_row_and_agrees(tiny):
    model, tok = tiny
    state = _state(tok, COTS[1])
    n = len(state.cot)
    reused = DeletionScorer(model, "reason-answer", 64)  # small budget: several groups
    base_a, first = reused.candidate_objectives(state, range(0, n, 2))
    base_b, second = reused.candidate_objectives(state, range(1, n, 2))
    base_c, fresh = DeletionScorer(model, "reason-answer", 64).candidate_objectives(state)
    assert base_a == base_b == pytest.approx(base_c, abs=1e-6)
    assert {**first, **second} == pytest.approx(fresh, abs=1e-4)


@pytest.mark.parametrize("objective", ["reason-answer", "answer"])
def test_next_step_continues_kept_rows_and_agrees_with_a_fresh_scorer(tiny, objective):
    model, tok = tiny
    state = _state(tok, COTS[1])
    scorer = DeletionScorer(model, objective, 96)  # small budget: several jobs per call
    scorer.candidate_objectives(state)
    d = 9
    after = ChainState(state.prompt, state.cot[:d] + state.cot[d + 1:], state.answer)
    before = scorer.work.tokens_run
    base_j, js = scorer.candidate_objectives(after)
    fresh_scorer = DeletionScorer(model, objective, 96)
    fresh_j, fresh = fresh_scorer.candidate_objectives(after)
    assert base_j == pytest.approx(fresh_j, abs=1e-4)
    assert js == pytest.approx(fresh, abs=1e-4)
    # no row of the chain itself, and candidates before d start after d
    assert scorer.work.tokens_run - before < fresh_scorer.work.tokens_run - len(after.ids)


@pytest.mark.parametrize("best_of", [None, 2])
def test_step_after_several_deletions_continues_rows_before_the_first(tiny, monkeypatch,
                                                                       best_of):
    """per_step > 1 deletes several tokens at once: S is no scored row then, but candidates
    before the first deletion still go on from there, with the same J as a fresh scorer."""
    model, tok = tiny
    state = _state(tok, COTS[1])
    gone = {7, 8, 12}
    after = ChainState(state.prompt, [t for i, t in enumerate(state.cot) if i not in gone],
                       state.answer)

    def next_step(reuse: bool) -> tuple[float, dict[int, float], int]:
        if not reuse:  # the rows of the last call are not continued: every candidate runs anew
            monkeypatch.setattr(deletion, "first_difference", lambda *_: None)
        scorer = DeletionScorer(model, "reason-answer", 96)
        scorer.candidate_objectives(state, best_of=best_of)
        before = scorer.work.tokens_run
        base_j, js = scorer.candidate_objectives(after)
        return base_j, js, scorer.work.tokens_run - before

    base_j, js, ran = next_step(reuse=True)
    fresh_j, fresh = DeletionScorer(model, "reason-answer", 96).candidate_objectives(after)
    assert base_j == pytest.approx(fresh_j, abs=1e-4)
    assert js == pytest.approx(fresh, abs=1e-4)
    *_, ran_anew = next_step(reuse=False)
    assert ran < ran_anew  # rows k < 7 started after 7


def test_window_estimates_are_each_candidates_window_plus_the_chains_tail(tiny):
    model, tok = tiny
    state = _state(tok, COTS[2])  # with a run of equal tokens
    p, window = len(state.prompt), 3
    scorer = DeletionScorer(model, "reason-answer", 4096)
    base_j, guesses = scorer.window_estimates(state, window)
    chain = per_target_nll(model, state.ids)
    assert base_j == pytest.approx(sum(chain[p:]), abs=1e-4)
    for k in range(len(state.cot)):
        first = first_of_run(state.cot, k)  # the run's tokens give one sequence, one estimate
        seq = state.ids[:p + first] + state.ids[p + first + 1:]
        g = min(p + first + window, len(seq))  # targets before g are the candidate's own
        want = sum(per_target_nll(model, seq)[p:g]) + sum(chain[g + 1:])
        assert guesses[k] == pytest.approx(want, abs=1e-4)
    _, exact = DeletionScorer(model, "reason-answer", 4096).candidate_objectives(state)
    assert scorer.window_estimates(state, 10**6)[1] == pytest.approx(exact, abs=1e-4)


@pytest.mark.parametrize("window", ["first_window", "screen"])
def test_a_window_wider_than_the_chain_is_plain_lazy_greedy(tiny, window):
    """--first-window and --screen W estimate candidates from W targets: wider than the chain,
    they change nothing; narrow, they run fewer tokens, and every J of the trace is still the
    exact J of the chain after that deletion, not an estimate."""
    model, tok = tiny
    state = _state(tok, COTS[1])
    deletions = len(state.cot) // 2

    def run(w):
        scorer = DeletionScorer(model, "reason-answer", 4096)
        traj = greedy_prune(scorer, state.prompt, state.cot, state.answer, deletions,
                            opts=GreedyOptions(shortlist=4, **{window: w}))
        return traj, scorer.work.tokens_run

    (plain, plain_ran), (wide, _), (narrow, ran) = [run(w) for w in (0, 10**6, 2)]
    assert wide.order == plain.order and wide.trace == pytest.approx(plain.trace, abs=1e-4)
    assert len(set(narrow.order)) == deletions and ran < plain_ran
    for step, j in enumerate(narrow.trace):
        gone = set(narrow.order[:step + 1])
        chain = ChainState(state.prompt, [t for i, t in enumerate(state.cot) if i not in gone],
                           state.answer)
        assert j == pytest.approx(sum(per_target_nll(model, chain.ids)[len(state.prompt):]),
                                  abs=1e-4)


def test_deleting_a_token_of_a_run_takes_the_runs_row_as_the_next_chain(tiny):
    model, tok = tiny
    state = _state(tok, COTS[2])
    k = next(i for i in range(len(state.cot) - 1) if state.cot[i] == state.cot[i + 1])
    scorer = DeletionScorer(model, "reason-answer", 4096)
    scorer.candidate_objectives(state)
    row = scorer.session.rows[k]  # every token of the run shares the row of its first
    after = ChainState(state.prompt, state.cot[:k] + state.cot[k + 1:], state.answer)
    base_j, js = scorer.candidate_objectives(after)
    assert scorer.session.chain is row  # not run again
    fresh_j, fresh = DeletionScorer(model, "reason-answer", 4096).candidate_objectives(after)
    assert base_j == pytest.approx(fresh_j, abs=1e-4)
    assert js == pytest.approx(fresh, abs=1e-4)


def test_first_difference_finds_where_a_shorter_chain_departs():
    assert deletion.first_difference([1, 2, 3, 4, 5, 6], [1, 2, 3, 5, 6], 1) == 2
    assert deletion.first_difference([1, 2, 3, 4, 5], [1, 2, 3, 4], 1) == 3  # the last token
    assert deletion.first_difference([1, 2, 3], [9, 2], 1) is None  # another prompt
    assert deletion.first_difference([1, 2, 3], [1, 2, 3], 1) is None  # not shorter


def test_rows_bounded_in_a_best_of_step_are_exact_in_a_plain_next_step(tiny, monkeypatch):
    """Rows cut at a checkpoint keep only bounds on their targets; the next step continues
    them, and a call without best_of must still give every J exactly."""
    # a random model spreads its mass: only the whole vocabulary bounds tightly enough to drop
    monkeypatch.setattr(deletion, "BOUND_VOCAB_TOP", 10**6)
    model, tok = tiny
    state = _state(tok, COTS[1])
    scorer = DeletionScorer(model, "reason-answer", 96, checkpoints=(6, 3))
    scorer.candidate_objectives(state, best_of=1)
    d = len(state.cot) - 2  # rows k < d go on from p + d - 1, with their bounds before it
    assert any(row.bounded.before(len(state.prompt) + d - 1)
               for k, row in scorer.session.rows.items() if k < d and row.bounded is not None)
    after = ChainState(state.prompt, state.cot[:d] + state.cot[d + 1:], state.answer)
    _, js = scorer.candidate_objectives(after)
    _, fresh = DeletionScorer(model, "reason-answer", 96).candidate_objectives(after)
    assert js == pytest.approx(fresh, abs=1e-4)


def test_rows_past_the_kv_budget_are_recomputed_and_agree(tiny, monkeypatch):
    import cotprune.core.deletion as deletion

    model, tok = tiny
    state = _state(tok, COTS[1])
    d = 9
    after = ChainState(state.prompt, state.cot[:d] + state.cot[d + 1:], state.answer)
    counts = {}
    for budget in (0, 10**12):
        monkeypatch.setattr(deletion, "KEEP_KV_BYTES", budget)
        scorer = DeletionScorer(model, "reason-answer", 96)
        scorer.candidate_objectives(state)
        before = scorer.work.tokens_run
        counts[budget] = (scorer.candidate_objectives(after), scorer.work.tokens_run - before)
    (j0, js0), ran0 = counts[0]
    (j1, js1), ran1 = counts[10**12]
    assert j0 == pytest.approx(j1, abs=1e-4) and js0 == pytest.approx(js1, abs=1e-4)
    assert ran0 > ran1  # without kept KV the next step recomputes everything


class SupermodularScorer:
    """A synthetic objective for the lazy-greedy logic: the CoT ids are the original indices;
    deleting i costs w[i], plus `pair` for each already-deleted original neighbour, so costs only
    grow as deletions accumulate (the case in which lazy evaluation is exact)."""

    def __init__(self, weights, pair):
        self.weights, self.pair, self.calls = weights, pair, 0

    def j(self, cot):
        gone = set(range(len(self.weights))) - set(cot)
        pairs = sum(1 for i in gone if i + 1 in gone)
        return sum(self.weights[i] for i in gone) + self.pair * pairs

    def candidate_objectives(self, state, candidates, best_of=None, screen=0):
        self.calls += 1
        cot = state.cot
        return self.j(cot), {k: self.j(cot[:k] + cot[k + 1:]) for k in candidates}

    def chain_objective(self, state):
        return self.j(state.cot)


@pytest.mark.parametrize("seed", range(5))
def test_lazy_greedy_equals_exact_when_costs_only_grow(seed):
    import random

    rng = random.Random(seed)
    n = 30
    weights = [rng.random() for _ in range(n)]
    cot = list(range(n))
    exact = greedy_prune(SupermodularScorer(weights, 0.3), [0], cot, [0], 20)
    lazy_scorer = SupermodularScorer(weights, 0.3)
    lazy = greedy_prune(lazy_scorer, [0], cot, [0], 20, opts=GreedyOptions(shortlist=2))
    assert lazy.order == exact.order
    assert lazy.trace == pytest.approx(exact.trace)


def test_lazy_greedy_rescores_past_the_shortlist_when_a_stale_cost_undercuts_the_best():
    # After 0 goes, deleting 1 costs 0.2 + 1.0 (its neighbour is gone): the shortlist of one
    # (token 1, stale cost 0.2) must not win against token 2's stale 0.3, so 2 is rescored.
    scorer = SupermodularScorer([0.1, 0.2, 0.3, 0.9, 0.9], 1.0)
    traj = greedy_prune(scorer, [0], list(range(5)), [0], 2, opts=GreedyOptions(shortlist=1))
    assert traj.order == [0, 2]
    assert scorer.calls == 3  # full first step, then the shortlist, then one more round


class OwnTermScorer:
    """J is the sum of the CoT tokens' own terms (the CoT ids are the original indices):
    token t's is own[t], plus `bump` once `raised_by[t]` is gone. So deleting that token
    lowers t's deletion cost by `bump`, which only t's own term shows."""

    def __init__(self, own, raised_by, bump):
        self.own, self.raised_by, self.bump = own, raised_by, bump

    def terms(self, cot):
        return [self.own[t] + (self.bump if self.raised_by.get(t, t) not in cot else 0.0)
                for t in cot]

    def candidate_objectives(self, state, candidates, best_of=None, screen=0):
        cot = state.cot
        return sum(self.terms(cot)), {k: sum(self.terms(cot[:k] + cot[k + 1:]))
                                      for k in candidates}

    def cot_nll(self, state):
        return self.terms(state.cot)

    def chain_objective(self, state):
        return sum(self.terms(state.cot))


def test_self_term_lets_lazy_greedy_see_a_cost_that_fell():
    # Deleting 2 (cost -2.0) raises token 4's own term by 1.0, so 4 then costs -1.5: the best.
    # Its stale cost (-0.5) keeps plain lazy greedy from rescoring it; the self term does not.
    scorer = OwnTermScorer([1.0, 1.0, 3.0, 1.0, 0.5, 1.0], {4: 2}, 1.0)
    cot = list(range(6))
    assert greedy_prune(scorer, [0], cot, [0], 2).order == [2, 4]
    plain = greedy_prune(scorer, [0], cot, [0], 2, opts=GreedyOptions(shortlist=1))
    assert plain.order == [2, 0]
    fixed = greedy_prune(scorer, [0], cot, [0], 2,
                         opts=GreedyOptions(shortlist=1, self_term=True))
    assert fixed.order == [2, 4]
    assert fixed.own_nll[4] == pytest.approx(1.5)  # saved for --resume


def test_corrected_stale_moves_a_cost_by_minus_its_own_change():
    assert corrected_stale(-0.5, 0.5, 1.5) == pytest.approx(-1.5)
    assert corrected_stale(0.25, 2.0, 1.0) == pytest.approx(1.25)
    assert corrected_stale(0.25, None, 1.0) == 0.25  # scored before own terms were kept
    assert corrected_stale(0.25, 2.0, None) == 0.25  # the chain's row is not at hand


def test_cot_nll_reads_held_rows_without_running(tiny):
    model, tok = tiny
    state = _state(tok, COTS[1])
    p, n = len(state.prompt), len(state.cot)
    scorer = DeletionScorer(model, "reason-answer", 4096)
    assert scorer.cot_nll(state) is None  # nothing scored yet
    scorer.candidate_objectives(state)
    d = 5
    after = ChainState(state.prompt, state.cot[:d] + state.cot[d + 1:], state.answer)
    ran = scorer.work.tokens_run
    for s in (state, after):
        want = per_target_nll(model, s.ids)[p:p + len(s.cot)]
        assert scorer.cot_nll(s) == pytest.approx(want, abs=1e-4)
    assert scorer.work.tokens_run == ran
    twice = ChainState(state.prompt, after.cot[:d] + after.cot[d + 1:], state.answer)
    assert scorer.cot_nll(twice) is None and len(scorer.cot_nll(state)) == n


def _check_best_of(full: dict[int, float], bounded: dict[int, float], m: int) -> list[int]:
    """The m cheapest agree exactly; every other value is a lower bound on its J that already
    exceeds the m-th cheapest J. Returns the candidates whose J was only bounded."""
    best = sorted(full, key=lambda k: (full[k], k))[:m]
    assert sorted(bounded, key=lambda k: (bounded[k], k))[:m] == best
    assert [bounded[k] for k in best] == pytest.approx([full[k] for k in best], abs=1e-4)
    cut = [k for k in full if abs(bounded[k] - full[k]) > 1e-4]
    assert all(full[best[-1]] < bounded[k] < full[k] for k in cut)
    return cut


@pytest.mark.parametrize("m", [1, 3])
def test_best_of_gives_the_best_exactly_on_a_tiny_model(tiny, m):
    model, tok = tiny
    state = _state(tok, COTS[1])
    _, full = DeletionScorer(model, "reason-answer", 96).candidate_objectives(state)
    scorer = DeletionScorer(model, "reason-answer", 96, checkpoints=(6, 3))
    _, bounded = scorer.candidate_objectives(state, best_of=m)
    _check_best_of(full, bounded, m)


GSM8K_QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as "
                  "many clips in May. How many clips did Natalia sell altogether in April and May?")
GSM8K_COT = ("Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in "
             "April and May.")


@pytest.fixture(scope="module")
def default_model(default_model_cache):
    return load_model(ModelOptions(device="cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 2])
def test_best_of_drops_rows_that_cannot_win_on_the_default_model(default_model, m):
    model, tok = default_model
    state = _state(tok, GSM8K_COT, question=GSM8K_QUESTION, answer="72")
    plain = DeletionScorer(model, "reason-answer", 4096)
    _, full = plain.candidate_objectives(state)
    bounded = DeletionScorer(model, "reason-answer", 4096, checkpoints=(8,))
    _, js = bounded.candidate_objectives(state, best_of=m)
    assert _check_best_of(full, js, m)  # some rows were dropped ...
    assert bounded.work.tokens_run < plain.work.tokens_run  # ... and their tails never ran ...
    # ... nor projected
    assert any(row.bounded is not None for row in bounded.session.rows.values())


@pytest.mark.slow
def test_exact_greedy_equals_reference_on_the_default_model(default_model):
    """Two steps (the second continues kept rows, some of them dropped by the bound); the
    answer objective, whose answer is too short to bound, is held to the reference above."""
    model, tok = default_model
    state = _state(tok, GSM8K_COT, question=GSM8K_QUESTION, answer="72")
    ref_order, ref_trace = reference_greedy(model, state.prompt, state.cot, state.answer, 2,
                                            "reason-answer")
    scorer = DeletionScorer(model, "reason-answer", 4096, checkpoints=(8,))
    traj = greedy_prune(scorer, state.prompt, state.cot, state.answer, 2)
    assert traj.order == ref_order
    assert traj.trace == pytest.approx(ref_trace, abs=1e-3)


def test_equal_neighbours_get_exactly_equal_j(tiny):
    model, tok = tiny
    state = _state(tok, COTS[2])
    runs = [k for k in range(1, len(state.cot)) if state.cot[k] == state.cot[k - 1]]
    assert runs  # the chain has a run of equal tokens
    _, js = DeletionScorer(model, "reason-answer", 96).candidate_objectives(state)
    assert all(js[k] == js[k - 1] for k in runs)


def test_kept_rows_hold_no_storage_beyond_their_own_kv(tiny):
    """A kept row's KV must not be a view into its job's whole cache, or every row that lives on
    keeps the job's other rows alive too (memory grew step after step)."""
    model, tok = tiny
    state = _state(tok, COTS[1])
    scorer = DeletionScorer(model, "reason-answer", 96, checkpoints=(6, 3))
    scorer.candidate_objectives(state, best_of=1)
    d = 9
    scorer.candidate_objectives(ChainState(state.prompt, state.cot[:d] + state.cot[d + 1:],
                                           state.answer), best_of=1)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for row in scorer.session.rows.values() if row.kv for pair in row.kv for t in pair}
    own = sum(kv_bytes(row) for row in scorer.session.rows.values())
    assert own > 0 and sum(storages.values()) == own


def test_screen_gives_exact_j_to_the_finished_rows_and_window_estimates_to_the_rest(tiny):
    """--screen W: every candidate runs W targets past its deletion; the likeliest run on to
    their end and carry their exact J, which the rows left behind cannot undercut: each of those
    carries its window plus the chain's tail, as `window_estimates` computes it."""
    model, tok = tiny
    state = _state(tok, COTS[2])
    window = 3
    _, exact = DeletionScorer(model, "reason-answer", 4096).candidate_objectives(state)
    base_j, guesses = DeletionScorer(model, "reason-answer", 4096).window_estimates(state, window)
    scorer = DeletionScorer(model, "reason-answer", 4096)
    screened_j, js = scorer.candidate_objectives(state, screen=window)
    assert screened_j == pytest.approx(base_j, abs=1e-4)
    finished = [k for k in js if js[k] == pytest.approx(exact[k], abs=1e-4)]
    estimated = [k for k in js if k not in finished]
    assert finished and estimated  # some rows stopped at their window
    assert js == pytest.approx({k: exact[k] if k in finished else guesses[k] for k in js},
                               abs=1e-4)
    best = min(js, key=js.get)
    assert js[best] == pytest.approx(exact[best], abs=1e-4)
    assert all(js[k] >= js[best] for k in estimated)
