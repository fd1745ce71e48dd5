"""`cotprune score`: per-token scores of every CoT token (SPEC "scores").

The per-batch work is `score_batch(model, tokenizer, layouts, scorers)`, which `predictor` and
`rl` reuse. It runs at most one SDPA forward of the right-padded batch, then:

- surprisal and entropy: `engine.logprob_entropy` on the hidden states that predict the CoT
  tokens only, projected to the vocabulary in row chunks (no batch x vocabulary logits);
- attention: `attention.AttentionCapture` recomputes only the answer-query rows of each layer's
  attention from the captured queries and keys;
- significance: a token-classification model on the CoT words (`scoring/significance_model.py`).

Scorers are looked up in `SCORERS` (name -> function of a `BatchContext` returning one list of
floats per layout); adding one is a function and a dict entry. `run_score` is the stage: read
and validate chains, lay them out, skip over-long ones (or fail with `--strict`), batch by
`--batch-tokens`, and write through `files.StageOutput` (so `--resume` and `--shard` work).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cotprune.console import Progress, log
from cotprune.core.engine import check_objective, decoder_and_head, forward_hidden, logprob_entropy
from cotprune.core.stage import RunOptions, open_stage
from cotprune.data.layout import Layout
from cotprune.errors import InputError

SCORER_NAMES = ("surprisal", "entropy", "attention", "loo", "significance")
DEFAULT_BATCH_TOKENS = 8192


@dataclass
class ScoreOptions:
    """What `score` computes and how it batches; validation names the flag at fault."""

    scorers: list[str]
    objective: str = "reason-answer"
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_length: int | None = None
    strict: bool = False
    significance_model: str | None = None

    def __post_init__(self) -> None:
        self.scorers = list(dict.fromkeys(self.scorers))  # duplicates once, order kept
        if not self.scorers:
            raise InputError("--scorer needs at least one scorer")
        for name in self.scorers:
            if name not in SCORER_NAMES:
                raise InputError(f"--scorer: unknown scorer {name!r} "
                                 f"(known: {', '.join(SCORER_NAMES)})")
        check_objective(self.objective)
        if self.batch_tokens < 1:
            raise InputError(f"--batch-tokens must be >= 1, got {self.batch_tokens}")
        if self.max_length is not None and self.max_length < 1:
            raise InputError(f"--max-length must be >= 1, got {self.max_length}")
        if "significance" in self.scorers and not self.significance_model:
            raise InputError("--scorer significance needs --significance-model PATH")


# --- one batch ---------------------------------------------------------------------------------

@dataclass
class BatchContext:
    """One batch of laid-out chains and what the scorers share (one forward, computed lazily)."""

    model: object
    tokenizer: object
    layouts: Sequence[Layout]
    scorers: Sequence[str]
    cots: Sequence[str] | None = None
    objective: str = "reason-answer"
    significance: object | None = None
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    _hidden: torch.Tensor | None = field(default=None, repr=False)
    _attention: list | None = field(default=None, repr=False)
    _logp: tuple | None = field(default=None, repr=False)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def forward(self) -> torch.Tensor:
        """Final hidden states of the batch; attention rows are captured in the same pass."""
        if self._hidden is None:
            seqs = [x.input_ids for x in self.layouts]
            if "attention" in self.scorers:
                from cotprune.core.attention import AttentionCapture

                with AttentionCapture(self.model) as capture:
                    capture.expect(self.layouts)
                    self._hidden = forward_hidden(self.model, seqs, self.pad_id)
                    self._attention = capture.take()
            else:
                self._hidden = forward_hidden(self.model, seqs, self.pad_id)
        return self._hidden

    def attention_rows(self) -> list:
        self.forward()
        if self._attention is None:
            raise RuntimeError("attention rows were not captured (scorer list lacks attention)")
        return self._attention

    def cot_logprob_entropy(self) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """log p(x_t | x_<t) and the entropy at each CoT position, one tensor per layout."""
        if self._logp is None:
            hidden = self.forward()
            _, head = decoder_and_head(self.model)
            rows, targets, sizes = [], [], []
            for r, x in enumerate(self.layouts):
                rows.append(hidden[r, x.cot_start - 1:x.cot_end - 1])
                targets.extend(x.cot_ids)
                sizes.append(x.cot_end - x.cot_start)
            logp, ent = logprob_entropy(
                torch.cat(rows), head, torch.tensor(targets, dtype=torch.long,
                                                    device=hidden.device),
                with_entropy="entropy" in self.scorers)
            self._logp = (list(logp.split(sizes)), list(ent.split(sizes)) if ent is not None
                          else None)
        return self._logp


def _surprisal(ctx: BatchContext) -> list[list[float]]:
    return [(-lp).tolist() for lp in ctx.cot_logprob_entropy()[0]]


def _entropy(ctx: BatchContext) -> list[list[float]]:
    return [e.tolist() for e in ctx.cot_logprob_entropy()[1]]


def _attention(ctx: BatchContext) -> list[list[float]]:
    return [rows.answer_mean().tolist() for rows in ctx.attention_rows()]


def _loo(ctx: BatchContext) -> list[list[float]]:
    """J without each CoT token minus J, suffixes batched on the cached prefix (deletion.py)."""
    from cotprune.core.deletion import ChainState, DeletionScorer

    scorer = DeletionScorer(ctx.model, ctx.objective, ctx.batch_tokens)
    return [scorer.loo_scores(ChainState.from_layout(x)) for x in ctx.layouts]


def _significance(ctx: BatchContext) -> list[list[float]]:
    if ctx.significance is None or ctx.cots is None:
        raise RuntimeError("significance needs the CoT texts and a SignificanceModel")
    return ctx.significance.token_scores(ctx.tokenizer, ctx.cots,
                                         [x.cot_ids for x in ctx.layouts])


SCORERS: dict[str, Callable[[BatchContext], list[list[float]]]] = {
    "surprisal": _surprisal,
    "entropy": _entropy,
    "attention": _attention,
    "loo": _loo,
    "significance": _significance,
}


@torch.no_grad()
def score_batch(model, tokenizer, layouts: Sequence[Layout], scorers: Sequence[str], *,
                cots: Sequence[str] | None = None, objective: str = "reason-answer",
                significance=None, batch_tokens: int = DEFAULT_BATCH_TOKENS) -> list[dict]:
    """{scorer: [score per CoT token]} for each layout (one SDPA forward for the whole batch)."""
    for x in layouts:
        if x.cot_start < 1:
            raise InputError("a CoT must follow at least one prompt token to be scored")
    ctx = BatchContext(model, tokenizer, layouts, scorers, cots=cots, objective=objective,
                       significance=significance, batch_tokens=batch_tokens)
    out: list[dict] = [{} for _ in layouts]
    for name in scorers:
        if name not in SCORERS:
            raise InputError(f"--scorer: unknown scorer {name!r}")
        for row, values in zip(out, SCORERS[name](ctx), strict=True):
            row[name] = values
    return out


# --- the stage ---------------------------------------------------------------------------------

def output_schema(chains_schema, scorers: Sequence[str]):
    """Chain columns (unknown ones pass through), layout, cot_tokens, one list<float32> each."""
    import pyarrow as pa

    from cotprune.data.files import LAYOUT_FIELDS, extend_schema

    fields = [*LAYOUT_FIELDS, pa.field("cot_tokens", pa.list_(pa.string()))]
    fields += [pa.field(name, pa.list_(pa.float32())) for name in scorers]
    return extend_schema(chains_schema.remove_metadata(), fields)


def context_limit(model, max_length: int | None) -> int | None:
    """The longest sequence allowed: the model's context, or --max-length if smaller."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    limits = [v for v in (context, max_length) if v]
    return min(limits) if limits else None


def lay_out_rows(rows: list[dict], tokenizer, limit: int | None, *, strict: bool,
                 file: str) -> tuple[list[Layout | None], int]:
    """Layouts of `rows` (None for a chain over `limit` tokens) and the number skipped."""
    from cotprune.data.layout import ChainLayout

    chain_layout = ChainLayout(tokenizer)
    layouts: list[Layout | None] = []
    skipped = 0
    for row in rows:
        x = chain_layout.layout(row["question"], row["cot"], row["answer"])
        if limit is not None and len(x.input_ids) > limit:
            message = (f"chain is {len(x.input_ids)} tokens, over the limit of {limit} (the "
                       "model's context or --max-length)")
            if strict:
                raise InputError(f"{message}; drop --strict to skip such chains", file=file,
                                 row=row["id"], column="cot")
            log.warning("skipping %s: %s", row["id"], message)
            layouts.append(None)
            skipped += 1
        else:
            layouts.append(x)
    return layouts, skipped


def score_options(opts: ScoreOptions) -> dict:
    """The options that change what `score` writes (batching does not), for the manifest."""
    return {"scorers": opts.scorers, "objective": opts.objective, "max_length": opts.max_length,
            "strict": opts.strict, "significance_model": opts.significance_model}


def run_score(chains: str | Path, out: str | Path, opts: ScoreOptions, model_opts,
              run: RunOptions | None = None) -> dict:
    """The `score` stage; returns the summary dict (chains, skipped, tokens, seconds, rate)."""
    from cotprune.core.engine import plan_batches
    from cotprune.data.files import validate_chains
    from cotprune.data.layout import token_texts

    run = run or RunOptions()
    stage = open_stage("score", chains, out, model_opts, run, validate=validate_chains,
                       output_schema=lambda schema: output_schema(schema, opts.scorers),
                       options=score_options(opts), check_model=_scorer_check(opts))
    model, tokenizer, rows = stage.model, stage.tokenizer, stage.rows
    significance = None
    if "significance" in opts.scorers:
        from cotprune.scoring.significance_model import SignificanceModel

        significance = SignificanceModel(opts.significance_model, next(model.parameters()).device,
                                         trust_remote_code=model_opts.trust_remote_code)
    layouts, skipped = lay_out_rows(rows, tokenizer, context_limit(model, opts.max_length),
                                    strict=opts.strict, file=str(chains))
    done = stage.output.done_ids
    todo = [k for k, x in enumerate(layouts) if x is not None and rows[k]["id"] not in done]
    batches = plan_batches([len(layouts[k].input_ids) for k in todo], opts.batch_tokens)
    with Progress(len(todo), "score") as progress:
        for batch in batches:
            ks = [todo[b] for b in batch]
            results = score_batch(model, tokenizer, [layouts[k] for k in ks], opts.scorers,
                                  cots=[rows[k]["cot"] for k in ks], objective=opts.objective,
                                  significance=significance, batch_tokens=opts.batch_tokens)
            written = []
            for k, scores in zip(ks, results, strict=True):
                x = layouts[k]
                written.append({**rows[k], **x.as_columns(),
                                "cot_tokens": token_texts(tokenizer, x.cot_ids), **scores})
            stage.write(written, ks)
            progress.advance(len(ks), sum(len(layouts[k].input_ids) for k in ks))
    count = stage.output.finish()
    seconds = progress.seconds
    return {"command": "score", "chains": count, "skipped": skipped, "tokens": progress.tokens,
            "seconds": round(seconds, 3),
            "tokens_per_second": round(progress.tokens / seconds, 1) if seconds > 0 else 0.0,
            "output": str(stage.output.target)}


def _scorer_check(opts: ScoreOptions):
    """A check of the loaded model for the scorers asked for: `attention` needs an
    architecture whose attention it can read, and must fail before any output exists."""
    if "attention" not in opts.scorers:
        return None
    from cotprune.core.attention import attention_modules

    return attention_modules
