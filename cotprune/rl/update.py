"""One step's policy update: token selection, micro-batched forward/backward, PPO-clip updates.

Each sampled response becomes a `Sample` (prompt ids, response ids, advantage). The training
forward of a sample runs on `prompt + response[:n]`, where n is the whole response except under
NAT-RPC, where it is the random cut: the forward and backward really see the shorter sequence.
Losses are accumulated over micro-batches with the step's global denominators (all processes).
Under many processes the policy runs inside DDP (`training.parts.dist.wrap_data_parallel`, the
same wrapping as `distill`): every process defers synchronisation on all but its last
micro-batch of an update, and one with nothing to train runs a zero-weight forward, so each
process joins exactly one gradient all-reduce per update whatever its micro-batch count.
Log-probs come from `training.parts.logprobs.TokenScores`: one chunk of logits at a time, in
the backward pass as well, so memory does not grow with tokens x vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cotprune.core.engine import pad_right, plan_batches
from cotprune.errors import InputError
from cotprune.rl.loss import LOSS_TYPES, ppo_clip_term, token_coefficients
from cotprune.rl.selection import entropy_mask, entropy_topk_mask, nat_rpc, nat_urs
from cotprune.training.parts.dist import Wrapped, all_sum
from cotprune.training.parts.logprobs import TokenScores

TOKEN_SELECTS = ("all", "entropy", "nat-urs", "nat-rpc")


@dataclass
class UpdateConfig:
    """Options of the policy update; validation names the flag."""

    loss_type: str = "grpo"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0
    temperature: float = 1.0
    token_select: str = "all"
    rho: float = 0.2
    entropy_scope: str = "step"
    entropy_normaliser: str = "all"
    keep_prob: float = 0.5
    cut_floor: float = 0.0
    batch_tokens: int = 8192
    max_new_tokens: int = 256
    updates_per_step: int = 1
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (self.loss_type in LOSS_TYPES, f"--loss-type must be one of {', '.join(LOSS_TYPES)}"),
            (self.token_select in TOKEN_SELECTS,
             f"--token-select must be one of {', '.join(TOKEN_SELECTS)}"),
            (self.entropy_scope in ("step", "micro"), "--entropy-scope must be step or micro"),
            (self.entropy_normaliser in ("all", "selected"),
             "--entropy-normaliser must be all or selected"),
            (0 < self.rho <= 1, "--rho must be in (0, 1]"),
            (0 < self.keep_prob <= 1, "--keep-prob must be in (0, 1]"),
            (0 <= self.cut_floor <= 1, "--cut-floor must be in [0, 1]"),
            (self.epsilon >= 0, "--epsilon must be >= 0"),
            (self.beta >= 0, "--beta must be >= 0"),
            (self.temperature > 0, "--temperature must be > 0"),
            (self.updates_per_step >= 1, "--updates-per-step must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


@dataclass
class Sample:
    """One response to train on."""

    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float


class PolicyPair:
    """The trained policy and a way to run the frozen initial policy (KL, Bingo references).

    With LoRA the initial policy is the policy with its adapter disabled; with full fine-tuning
    it is a frozen copy.
    """

    def __init__(self, policy, frozen=None):
        self.policy, self.frozen = policy, frozen

    @contextlib.contextmanager
    def reference(self):
        if self.frozen is not None:
            yield self.frozen
        elif hasattr(self.policy, "disable_adapter"):
            with self.policy.disable_adapter():
                yield self.policy
        else:
            raise RuntimeError("no reference policy: full fine-tuning needs a frozen copy")


# --- forward -----------------------------------------------------------------------------------

def as_wrapped(model) -> Wrapped:
    """A causal LM as a one-process `Wrapped` `TokenScores`; a `Wrapped` stays as it is."""
    if isinstance(model, Wrapped):
        return model
    scores = TokenScores(model)
    return Wrapped(scores, scores, "none")


def response_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], device):
    """(input_ids, attention_mask, hidden_index, targets) of right-padded prompt + response rows:
    the flat hidden rows that predict each response token, and those tokens."""
    seqs = [[*p, *r] for p, r in zip(prompts, responses)]
    ids, mask = pad_right(seqs, 0, device)
    width = ids.shape[1]
    index = [i * width + len(p) - 1 + k for i, (p, r) in enumerate(zip(prompts, responses))
             for k in range(len(r))]
    targets = [t for r in responses for t in r]
    return (ids, mask, torch.tensor(index, dtype=torch.long, device=device),
            torch.tensor(targets, dtype=torch.long, device=device))


def response_logprobs(scores, prompts: Sequence[Sequence[int]],
                      responses: Sequence[Sequence[int]], *, temperature: float = 1.0,
                      with_entropy: bool = False
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """log pi(response token) (and entropy) for each row of one micro-batch, under grad mode.

    `scores` is a `TokenScores` module (or DDP around one), or a causal LM. Logits are divided
    by `temperature` (the sampling distribution), as TRL does.
    """
    if not isinstance(scores, torch.nn.Module) or not _is_scores(scores):
        scores = TokenScores(scores)
    device = next(scores.parameters()).device
    ids, mask, index, targets = response_batch(prompts, responses, device)
    logp, ent = scores(ids, mask, None, index, targets, temperature=temperature,
                       with_entropy=with_entropy)
    sizes = [len(r) for r in responses]
    return list(logp.split(sizes)), (list(ent.split(sizes)) if ent is not None else None)


def _is_scores(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "module", module), TokenScores)


@torch.no_grad()
def batched_logprobs(model, prompts, responses, *, batch_tokens: int, temperature: float = 1.0,
                     with_entropy: bool = False):
    """`response_logprobs` of many rows, no grad, batched by the token budget."""
    scores = as_wrapped(model).plain
    out_lp: list = [None] * len(prompts)
    out_ent: list = [None] * len(prompts)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    for batch in plan_batches(lengths, batch_tokens):
        lp, ent = response_logprobs(scores, [prompts[i] for i in batch],
                                    [responses[i] for i in batch], temperature=temperature,
                                    with_entropy=with_entropy)
        for k, i in enumerate(batch):
            out_lp[i] = lp[k].float()
            if ent is not None:
                out_ent[i] = ent[k].float()
    return out_lp, (out_ent if with_entropy else None)


# --- selection ---------------------------------------------------------------------------------

def nat_selection(lengths: list[int], cfg: UpdateConfig, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, weights) [B, max L] of `all`, `nat-urs` or `nat-rpc` (entropy is chosen later)."""
    if cfg.token_select == "nat-urs":
        return nat_urs(lengths, cfg.keep_prob, generator)
    if cfg.token_select == "nat-rpc":
        return nat_rpc(lengths, cfg.cut_floor, generator)
    width = max(lengths, default=0)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return mask, mask.float()


def padded(rows: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r.detach().cpu()
    return out


def entropy_selection(entropies: list[torch.Tensor], lengths: list[int], batches: list[list[int]],
                      cfg: UpdateConfig) -> torch.Tensor:
    """The entropy mask [B, max L]: over the whole step (all processes) or per micro-batch."""
    width = max(lengths, default=0)
    ent = padded(entropies, width)
    valid = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    if cfg.entropy_scope == "step":
        return entropy_mask(ent, valid, cfg.rho)
    mask = torch.zeros_like(valid)
    for batch in batches:
        idx = torch.tensor(batch)
        mask[idx] = entropy_topk_mask(ent[idx], valid[idx], cfg.rho)
    return mask


# --- the update --------------------------------------------------------------------------------

def policy_update(pair: PolicyPair, optimizer, samples: Sequence[Sample], cfg: UpdateConfig,
                  generator: torch.Generator, *, wrapped: Wrapped | None = None) -> dict:
    """Take `cfg.updates_per_step` PPO-clip updates on this process's `samples`; return stats.

    `wrapped` is the policy's `TokenScores` prepared for data parallelism (one process: None).
    """
    model = pair.policy
    wrapped = as_wrapped(model) if wrapped is None else wrapped
    # DDP averages gradients; the objective's denominators are global, so scale back to a sum
    world = _world() if wrapped.kind != "none" else 1
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    lengths = [len(s.response_ids) for s in samples]
    mask, weights = nat_selection(lengths, cfg, generator)
    cuts = [int(c) for c in mask.sum(1).tolist()] if cfg.token_select == "nat-rpc" else lengths
    rows = [i for i in range(len(samples)) if cuts[i] > 0]
    prompts = [samples[i].prompt_ids for i in rows]
    responses = [samples[i].response_ids[:cuts[i]] for i in rows]
    batches_local = plan_batches([len(p) + len(r) for p, r in zip(prompts, responses)],
                                 cfg.batch_tokens)
    batches = [[rows[k] for k in b] for b in batches_local]
    num_responses = int(all_sum(len(samples), device))
    adv = torch.tensor([s.advantage for s in samples], dtype=torch.float32)

    old = ref = None
    if cfg.updates_per_step > 1:
        old, _ = batched_logprobs(wrapped, prompts, responses, batch_tokens=cfg.batch_tokens,
                                  temperature=cfg.temperature)
        old = dict(zip(rows, old))
    if cfg.beta > 0:
        with pair.reference() as reference:
            ref, _ = batched_logprobs(reference, prompts, responses,
                                      batch_tokens=cfg.batch_tokens, temperature=cfg.temperature)
        ref = dict(zip(rows, ref))

    stats = {"tokens_trained": 0.0, "forward_tokens": 0.0, "objective": 0.0}
    for _ in range(cfg.updates_per_step):
        counts = lengths
        if cfg.token_select == "entropy":
            _, ents = batched_logprobs(wrapped, prompts, responses, batch_tokens=cfg.batch_tokens,
                                       temperature=cfg.temperature, with_entropy=True)
            full = [torch.zeros(0)] * len(samples)
            for k, i in enumerate(rows):
                full[i] = ents[k]
            mask = entropy_selection(full, lengths, batches, cfg)
            weights = mask.float()
            if cfg.entropy_normaliser == "selected":
                counts = [int(c) for c in mask.sum(1).tolist()]
        coef = token_coefficients(counts, cfg.loss_type, max_new_tokens=cfg.max_new_tokens,
                                  num_responses=num_responses,
                                  total_tokens=all_sum(sum(counts), device))
        for k, batch in enumerate(batches):
            sync = k == len(batches) - 1  # the last micro-batch joins the all-reduce
            with contextlib.nullcontext() if sync else wrapped.no_sync():
                lps, _ = response_logprobs(wrapped.train, [samples[i].prompt_ids for i in batch],
                                           [samples[i].response_ids[:cuts[i]] for i in batch],
                                           temperature=cfg.temperature)
                objective = torch.zeros((), device=device)
                for i, lp in zip(batch, lps):
                    n = len(lp)
                    old_lp = old[i].to(device) if old is not None else lp.detach()
                    term = ppo_clip_term(lp, old_lp, adv[i].to(device), eps_low=cfg.epsilon,
                                         eps_high=cfg.epsilon_high, beta=cfg.beta,
                                         ref_logp=ref[i].to(device) if ref is not None else None)
                    w = weights[i, :n].to(device)
                    objective = objective + float(coef[i]) * (term * w).sum()
                    stats["forward_tokens"] += len(samples[i].prompt_ids) + n
                (-objective * world).backward()
            stats["objective"] += float(objective.detach())
        if not batches and wrapped.kind != "none":
            idle_backward(wrapped.train)
        stats["tokens_trained"] += float(mask.sum())
        if cfg.max_grad_norm and params:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    stats["objective"] = all_sum(stats["objective"], device) / cfg.updates_per_step
    stats["tokens_trained"] = all_sum(stats["tokens_trained"], device)
    stats["forward_tokens"] = all_sum(stats["forward_tokens"], device)
    return stats


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def idle_backward(scores) -> None:
    """A zero-weight forward and backward, for a process with no tokens in an update: it still
    joins the gradient all-reduce the others are in (and contributes zeros)."""
    lps, _ = response_logprobs(scores, [[0]], [[0]])
    (lps[0].sum() * 0.0).backward()
