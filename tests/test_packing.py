import os

import torch

from cotprune.core.packing import FORCE_GQA, block_mask, grouped_query_sdpa, lanes, lay_out


def test_lanes_hold_each_key_once_in_as_few_balanced_lanes_as_the_width_allows():
    sizes = {0: 50, 1: 45, 2: 40, 3: 30, 4: 20, 5: 10, 6: 5, 7: 1}  # 201 tokens
    out = lanes(list(sizes), sizes, 128)
    assert sorted(k for lane in out for k in lane) == sorted(sizes)
    fills = [sum(sizes[k] for k in lane) for lane in out]
    assert len(out) == 2 and fills == sorted(fills, reverse=True)
    assert max(fills) - min(fills) <= max(sizes.values())  # balanced: not 128 + 73
    assert lanes([0, 1], {0: 300, 1: 2}, 128) == [[0], [1]]  # too long: its own lane


def test_block_mask_lets_each_block_see_its_past_prefix_and_its_own_earlier_tokens():
    # past of 3 positions; block A (2 tokens) starts after past position 1, block B (3 tokens)
    # after all 3
    seen = block_mask([1, 3], [2, 3], 3, torch.float32)[0, 0] == 0
    expected = torch.tensor([
        # past    A     B
        [1, 0, 0, 1, 0, 0, 0, 0],  # A0
        [1, 0, 0, 1, 1, 0, 0, 0],  # A1
        [1, 1, 1, 0, 0, 1, 0, 0],  # B0
        [1, 1, 1, 0, 0, 1, 1, 0],  # B1
        [1, 1, 1, 0, 0, 1, 1, 1],  # B2
    ], dtype=torch.bool)
    assert torch.equal(seen, expected)
    padded = block_mask([1, 3], [2, 3], 3, torch.float32, width=7)[0, 0] == 0
    assert padded.shape == (7, 10)
    assert torch.equal(padded[:5, :8], expected)
    assert not padded[5:].any() and not padded[:, 8:].any()  # padding: seen by nothing


def test_grouped_query_switch_is_set_only_during_cpu_forwards(monkeypatch):
    monkeypatch.delenv(FORCE_GQA, raising=False)
    with grouped_query_sdpa(torch.device("cpu")):
        assert os.environ[FORCE_GQA] == "1"
    assert FORCE_GQA not in os.environ
    with grouped_query_sdpa(torch.device("meta")):
        assert FORCE_GQA not in os.environ
    monkeypatch.setenv(FORCE_GQA, "0")  # a user's own setting is left alone
    with grouped_query_sdpa(torch.device("cpu")):
        assert os.environ[FORCE_GQA] == "0"
    assert os.environ[FORCE_GQA] == "0"


def test_lay_out_puts_blocks_one_after_another_in_their_lanes_with_true_positions():
    # lane 0: blocks 0 (3 tokens from position 5) and 2 (1 token from 9); lane 1: block 1
    pack = lay_out([[0, 2], [1]], [[11, 12, 13], [21, 22], [31]], [5, 7, 9], 9, torch.float32)
    assert pack.place == [(0, 0), (1, 0), (0, 3)]
    assert pack.tokens.tolist() == [[11, 12, 13, 31], [21, 22, 0, 0]]
    assert pack.positions[0].tolist() == [5, 6, 7, 9] and pack.positions[1, :2].tolist() == [7, 8]
    assert pack.mask.shape == (2, 1, 4, 13)
    assert torch.equal(pack.mask[0:1], block_mask([5, 9], [3, 1], 9, torch.float32))
    assert torch.equal(pack.mask[1:2], block_mask([7], [2], 9, torch.float32, width=4))
