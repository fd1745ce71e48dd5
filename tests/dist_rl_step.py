"""One `rl` policy update, run by tests/test_training_parallel.py as 1 process or under torchrun.

    python tests/dist_rl_step.py MODEL OUT.pt MODE     (or: torchrun --nproc-per-node 2 ...)

Every process builds the same policy and the same 8 samples; process r trains on samples
r, r + W, ... through the shared DDP wrapping (MODE "all-uneven": rank 0 trains on all of them
and rank 1 on none, so the micro-batch counts differ and one process only joins the
all-reduce). Rank 0 saves the stats and the weights after two PPO updates (so the ratio is
not 1 at the second) with plain SGD.
"""

from __future__ import annotations

import sys

import torch


def main(model_path: str, out: str, mode: str) -> None:
    from transformers import AutoModelForCausalLM

    from cotprune.rl.update import PolicyPair, Sample, UpdateConfig, policy_update
    from cotprune.training.parts.dist import init_distributed, wrap_data_parallel
    from cotprune.training.parts.logprobs import TokenScores

    d = init_distributed("cpu")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    lengths = [(5, 9), (3, 4), (6, 12), (4, 7), (5, 3), (2, 10), (6, 6), (3, 8)]
    samples = [Sample(torch.randint(5, 900, (p,), generator=g).tolist(),
                      torch.randint(5, 900, (r,), generator=g).tolist(), adv)
               for (p, r), adv in zip(lengths, [1.0, -0.5, 0.3, 2.0, -1.0, 0.7, -0.2, 1.5],
                                      strict=True)]
    # "-uneven": rank 0 takes every sample, so rank 1 has no micro-batch at all
    mode, uneven = mode.removesuffix("-uneven"), mode.endswith("-uneven")
    mine = (samples if d.rank == 0 else []) if uneven else samples[d.rank::d.world]
    cfg = UpdateConfig(loss_type="dapo", token_select=mode, rho=0.5, epsilon=0.1,
                       epsilon_high=0.15, updates_per_step=2, batch_tokens=24,
                       max_new_tokens=12, max_grad_norm=1.0)
    wrapped = wrap_data_parallel(TokenScores(model), d)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = policy_update(PolicyPair(model), opt, mine, cfg, torch.Generator(), wrapped=wrapped)
    if d.main:
        torch.save({"stats": stats, "weights": {n: p.detach().clone()
                                                for n, p in model.named_parameters()},
                    "world": d.world, "kind": wrapped.kind,
                    "moved": max(float((p.detach() - before[n]).abs().max())
                                 for n, p in model.named_parameters())}, out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
