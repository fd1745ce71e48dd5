import pytest
import torch

from cotprune.core.bounds import BOUND_SLACK, Bounded, bound_vocabulary, nll_lower_bound


def test_nll_lower_bound_is_below_the_exact_nll_and_tight_on_the_whole_vocabulary():
    torch.manual_seed(0)
    weight, hidden = torch.randn(300, 16), 3 * torch.randn(40, 16)
    targets = torch.randint(0, 300, (40,))
    exact = -torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None])[:, 0]
    part = torch.unique(torch.cat([targets, torch.randint(0, 300, (30,))]))
    bound = nll_lower_bound(hidden, weight, part, targets)
    assert (bound <= exact).all() and (bound >= 0).all()
    assert (bound < exact - 0.1).any()  # the rest of the vocabulary has mass
    whole = nll_lower_bound(hidden, weight, torch.arange(300), targets)
    assert torch.allclose(whole, (exact - BOUND_SLACK).clamp_min(0), atol=1e-4)
    assert (whole <= exact).all()


def test_nll_lower_bound_refuses_a_target_outside_its_vocabulary():
    with pytest.raises(ValueError, match="bound vocabulary"):
        nll_lower_bound(torch.randn(2, 4), torch.randn(10, 4), torch.tensor([1, 3]),
                        torch.tensor([1, 2]))


def test_bound_vocabulary_holds_the_ids_and_each_rows_likeliest_tokens():
    head = torch.nn.Linear(10, 10, bias=False)
    torch.nn.init.eye_(head.weight)  # logits = hidden
    hidden = torch.full((3, 10), -5.0)
    hidden[0, 7], hidden[0, 2], hidden[1, 4], hidden[2, 0] = 3.0, 2.0, 1.0, 1.0
    with torch.no_grad():
        assert bound_vocabulary(hidden, head, [9, 1, 9], 1, chunk_rows=2).tolist() == [0, 1, 4,
                                                                                       7, 9]
        assert 2 in bound_vocabulary(hidden, head, [9], 2).tolist()
        assert len(bound_vocabulary(hidden, head, [9], 10**6)) == 10  # at most all of it


def test_bounded_splits_before_a_position_and_joins_in_order():
    hidden = torch.arange(8.0).reshape(4, 2)
    b = Bounded([3, 5, 6, 9], hidden)
    head = b.before(6)
    assert head.positions == [3, 5] and torch.equal(head.hidden, hidden[:2])
    assert b.before(3) is None
    joined = Bounded.join(head, [7], torch.ones(1, 2))
    assert joined.positions == [3, 5, 7] and joined.hidden.shape == (3, 2)
    assert Bounded.join(None, [1], hidden[:1]).positions == [1]
