"""Predict greedy deletion ranks from one forward pass (arXiv 2601.03066, "attention predicts").

Greedy pruning (`greedy.py`) costs O(n) batched forwards per chain; a predictor costs one (or
n / K with `--repredict-every K`). This module holds the features, the artifact and the stages:

- features, per CoT token, from ONE SDPA forward of the pruner model (`chain_features`): per-layer
  attention received from the answer span and from later CoT tokens (`attention.AttentionCapture`
  with `later_cot=True`, no eager model), surprisal and entropy (`score.BatchContext`, the score
  engine's own code), relative position t / (n - 1), and two lexical flags (the token holds a
  digit; it starts a word), which cost nothing and add signal that attention lacks on small
  models (BENCHMARKS.md). Attention enters the model as
  log(a + ATTENTION_EPS): it is heavy-tailed and its scale shrinks with sequence length.
- targets, metrics and the rank model live in `ranking.py`: the normalised greedy rank (never
  deleted tokens tie), Spearman, and `RankNet` (standardised features -> 2-layer MLP or linear
  map, higher = deleted later) trained with a pairwise loss within each chain by default, since
  the predictor only ever ORDERS the tokens of one chain.
- artifact: one safetensors file: the weights, feature mean/std, and JSON metadata under the key
  `cotprune_predictor` (feature names, layers, pruner model, architecture, training summary).
- the prune hook: `load_predictor(path, model_name).order(model, tokenizer, layout, protected,
  repredict_every)`, called by `prune.py` for `--method predicted`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cotprune.data.layout import Layout, join_segments, token_texts
from cotprune.errors import InputError
from cotprune.pruning.ranking import (
    FitOptions,
    RankNet,
    greedy_ranks,
    keep_overlap,
    mean_finite,
    mean_spearman,
    spearman,
    train_ranknet,
)

META_KEY = "cotprune_predictor"
FORMAT_VERSION = 2  # 2: lexical features (digit, word start) added
ATTENTION_EPS = 1e-4
SCALARS = ("surprisal", "entropy", "position")
LEXICAL = ("digit", "word_start")
BASELINES = ("attention", "surprisal", "entropy", "position", "digit")


# --- features ------------------------------------------------------------------------------------

@dataclass
class ChainFeatures:
    """Raw per-token features of one chain: attention [layers, n], the rest [n] (float32)."""

    answer: torch.Tensor
    later: torch.Tensor
    surprisal: torch.Tensor
    entropy: torch.Tensor
    position: torch.Tensor
    lexical: torch.Tensor  # [len(LEXICAL), n]: 1.0 where the token has a digit / starts a word

    def matrix(self) -> torch.Tensor:
        """[n, 2 * layers + 5]: log attention (answer, later CoT), surprisal, entropy, position,
        then the lexical flags."""
        attn = torch.log(torch.cat([self.answer, self.later]) + ATTENTION_EPS)
        scalars = torch.stack([self.surprisal, self.entropy, self.position])
        return torch.cat([attn, scalars, self.lexical]).T

    def baseline(self, name: str) -> torch.Tensor:
        """One raw feature alone: `attention` is the score engine's scorer (mean over layers)."""
        if name == "attention":
            return self.answer.mean(0)
        if name in LEXICAL:
            return self.lexical[LEXICAL.index(name)]
        return getattr(self, name)


def feature_names(layers: int) -> list[str]:
    return ([f"attn_answer_L{i}" for i in range(layers)]
            + [f"attn_later_cot_L{i}" for i in range(layers)] + list(SCALARS) + list(LEXICAL))


def relative_position(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32) / max(n - 1, 1)


def lexical_flags(texts: Sequence[str]) -> torch.Tensor:
    """[len(LEXICAL), n]: the token holds a digit; the token starts a word (leading space or
    newline). Greedy deletes number tokens late and word-initial pieces early, which neither
    attention nor surprisal shows on small models."""
    return torch.tensor([[float(any(c.isdigit() for c in t)) for t in texts],
                         [float(t[:1].isspace()) for t in texts]])


@torch.no_grad()
def chain_features(model, tokenizer, layouts: Sequence[Layout], *,
                   batch_tokens: int = 8192) -> list[ChainFeatures]:
    """Features of each layout; one SDPA forward per batch gives attention, surprisal, entropy."""
    from cotprune.core.attention import AttentionCapture
    from cotprune.core.engine import plan_batches
    from cotprune.scoring.score import BatchContext

    for x in layouts:
        if x.cot_start < 1:
            raise InputError("a CoT must follow at least one prompt token to be scored")
    out: list[ChainFeatures | None] = [None] * len(layouts)
    for batch in plan_batches([len(x.input_ids) for x in layouts], batch_tokens):
        group = [layouts[i] for i in batch]
        ctx = BatchContext(model, tokenizer, group, ["surprisal", "entropy"])
        with AttentionCapture(model, later_cot=True) as capture:
            capture.expect(group)
            ctx.forward()
            rows = capture.take()
        logp, ent = ctx.cot_logprob_entropy()
        for r, i in enumerate(batch):
            out[i] = ChainFeatures(
                answer=rows[r].answer.float().cpu(), later=rows[r].later_cot.float().cpu(),
                surprisal=(-logp[r]).float().cpu(), entropy=ent[r].float().cpu(),
                position=relative_position(len(group[r].cot_ids)),
                lexical=lexical_flags(token_texts(tokenizer, group[r].cot_ids)))
    return out


# --- the artifact and the prune hook ---------------------------------------------------------

def model_key(name: str) -> str:
    """How a pruner model is named in an artifact: a local directory by its absolute path."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


@dataclass
class PredictorSpec:
    """The JSON metadata of an artifact."""

    pruner_model: str
    layers: int
    feature_names: list[str]
    arch: str
    hidden: int
    loss: str
    attention_eps: float = ATTENTION_EPS
    format_version: int = FORMAT_VERSION
    training: dict = field(default_factory=dict)


class Predictor:
    """A fitted rank model bound to its pruner model's feature layout."""

    def __init__(self, spec: PredictorSpec, net: RankNet):
        self.spec, self.net = spec, net

    def check_model(self, model) -> None:
        from cotprune.core.attention import attention_modules

        layers = len(attention_modules(model))
        if layers != self.spec.layers:
            raise InputError(f"the predictor was fitted on {self.spec.layers}-layer features, "
                             f"the model has {layers} layers")

    @torch.no_grad()
    def scores(self, features: Sequence[ChainFeatures]) -> list[list[float]]:
        """Predicted score per CoT token (higher = deleted later)."""
        return [self.net(f.matrix()).tolist() if len(f.position) else [] for f in features]

    def order(self, model, tokenizer, layout: Layout, protected: frozenset[int],
              repredict_every: int | None = None) -> list[int]:
        """Original CoT indices, first deleted first (protected never).

        With `repredict_every=K` the ranking is dynamic: after every K deletions the features
        are recomputed on the pruned chain (positions relative to it) and the rest re-ranked.
        """
        if repredict_every is not None and repredict_every < 1:
            raise InputError(f"--repredict-every must be >= 1, got {repredict_every}")
        self.check_model(model)
        prompt = layout.input_ids[:layout.cot_start]
        answer = layout.input_ids[layout.answer_start:layout.answer_end]
        cot = layout.cot_ids
        remaining = list(range(len(cot)))  # original index of each token still in the chain
        order: list[int] = []
        while True:
            candidates = [k for k, i in enumerate(remaining) if i not in protected]
            if not candidates:
                return order
            current = join_segments(prompt, [cot[i] for i in remaining], answer)
            scores = self.scores(chain_features(model, tokenizer, [current]))[0]
            ranked = sorted(candidates, key=lambda k: (scores[k], remaining[k]))
            take = ranked[:repredict_every] if repredict_every else ranked
            order += [remaining[k] for k in take]
            if not repredict_every:
                return order
            gone = set(take)
            remaining = [i for k, i in enumerate(remaining) if k not in gone]


def save_predictor(path: str | Path, spec: PredictorSpec, net: RankNet) -> None:
    """One safetensors file, written atomically (temp file beside it, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(asdict(spec))})
    os.replace(tmp, path)


def read_predictor(path: str | Path) -> Predictor:
    """Load an artifact; anything that is not one is an InputError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as e:
        raise InputError(f"not a predictor file ({e})", file=str(path)) from None
    if META_KEY not in meta:
        raise InputError("not a predictor file (no cotprune_predictor metadata)", file=str(path))
    spec = PredictorSpec(**json.loads(meta[META_KEY]))
    if spec.format_version != FORMAT_VERSION:
        raise InputError(f"predictor format {spec.format_version} is not supported",
                         file=str(path))
    net = RankNet(len(spec.feature_names), spec.arch, spec.hidden)
    net.load_state_dict(tensors)
    net.eval()
    return Predictor(spec, net)


def load_predictor(path: str, model_name: str) -> Predictor:
    """The prune hook: the artifact, refused when it was fitted for another pruner model."""
    predictor = read_predictor(path)
    if model_key(model_name) != predictor.spec.pruner_model:
        raise InputError(f"the predictor was fitted for pruner model "
                         f"{predictor.spec.pruner_model!r}, not {model_key(model_name)!r}; "
                         "pass that --model or fit a predictor for this one", file=str(path))
    return predictor


# --- the stages: fit and eval --------------------------------------------------------------------

GREEDY_COLUMNS = ("id", "input_ids", "cot_start", "cot_end", "answer_start", "answer_end",
                  "keep_ratio", "kept_positions", "prune_order")


@dataclass
class GreedyChain:
    """One chain of a greedy pruned file: its layout, trajectory and kept sets per ratio."""

    id: str
    layout: Layout
    prune_order: list[int]
    kept: dict[float, list[int]]

    @property
    def ranks(self) -> list[float]:
        return greedy_ranks(self.prune_order, len(self.layout.cot_ids))


def read_greedy(path: str | Path, limit: int | None = None) -> tuple[list[GreedyChain], dict]:
    """Chains (first-seen order) of a `prune --method greedy` file, and the file's manifest."""
    from cotprune.data.files import read_manifest, read_table, require_columns, validate_chains

    table = read_table(path)
    if "prune_order" not in table.column_names:
        raise InputError("missing column: fit and eval need `prune --method greedy` output",
                         file=str(path), column="prune_order")
    require_columns(table, GREEDY_COLUMNS, str(path))
    validate_chains(table, str(path), need=("id",), unique_ids=False)  # rows, ids not null
    chains: dict[str, GreedyChain] = {}
    for row in table.select(list(GREEDY_COLUMNS)).to_pylist():
        if row["prune_order"] is None:
            raise InputError("no greedy trajectory (fit and eval need `prune --method greedy` "
                             "output)", file=str(path), row=row["id"], column="prune_order")
        if row["id"] not in chains:
            if limit is not None and len(chains) == limit:
                continue
            layout = Layout(row["input_ids"], row["cot_start"], row["cot_end"],
                            row["answer_start"], row["answer_end"])
            n = len(layout.cot_ids)
            if any(not 0 <= i < n for i in row["prune_order"]) \
                    or len(set(row["prune_order"])) != len(row["prune_order"]):
                raise InputError(f"prune_order must hold distinct CoT indices in [0, {n})",
                                 file=str(path), row=row["id"], column="prune_order")
            chains[row["id"]] = GreedyChain(row["id"], layout, row["prune_order"], {})
        chains[row["id"]].kept[round(row["keep_ratio"], 6)] = row["kept_positions"]
    if not chains:
        raise InputError("no rows", file=str(path))
    return list(chains.values()), read_manifest(path) or {}


def fit_predictor(pruned: str | Path, out: str | Path, model_opts, opts: FitOptions, *,
                  limit: int | None = None) -> dict:
    """`predictor fit`: features of every greedy chain, train, save one artifact."""
    import time

    from cotprune.core.models import load_model

    start = time.perf_counter()
    from cotprune.console import log
    from cotprune.core.attention import attention_modules

    chains, manifest = read_greedy(pruned, limit)
    from cotprune.data.files import check_writable

    check_writable(out)  # before the features and the training, not after
    greedy_model = manifest.get("model")
    if greedy_model and model_key(greedy_model) != model_key(model_opts.model):
        log.warning("the greedy ranks in %s come from %s; fitting features of %s", pruned,
                    greedy_model, model_opts.model)
    model, tokenizer = load_model(model_opts)

    layers = len(attention_modules(model))
    features = chain_features(model, tokenizer, [c.layout for c in chains],
                              batch_tokens=opts.batch_tokens)
    xs = [f.matrix() for f in features]
    ys = [c.ranks for c in chains]
    fit = train_ranknet(xs, ys, opts)
    net = fit.net
    training = {"file": str(pruned), "chains": len(chains), "tokens": sum(len(y) for y in ys),
                "epochs": fit.epochs, "max_epochs": opts.epochs, "lr": opts.lr,
                "weight_decay": opts.weight_decay, "seed": opts.seed,
                "val_fraction": opts.val_fraction, "val_spearman": fit.val_spearman,
                "final_loss": round(fit.curve[-1], 6),
                "train_spearman": mean_spearman(net, xs, ys)}
    spec = PredictorSpec(pruner_model=model_key(model_opts.model), layers=layers,
                         feature_names=feature_names(layers), arch=opts.arch, hidden=opts.hidden,
                         loss=opts.loss, training=training)
    save_predictor(out, spec, net)
    return {"command": "predictor fit", **training, "arch": opts.arch, "loss": opts.loss,
            "seconds": round(time.perf_counter() - start, 3), "output": str(out)}


def evaluate(predictor: Predictor, chains: Sequence[GreedyChain],
             features: Sequence[ChainFeatures]) -> dict:
    """Mean per-chain Spearman (predictor and each raw feature) and keep-set overlaps.

    Baselines are signed: a raw feature's correlation with the greedy rank (positive = tokens
    with higher values are deleted later). Overlaps keep the top-valued tokens, as prune does.
    """
    predicted = predictor.scores(features)
    ranks = [c.ranks for c in chains]
    signals = {"predictor": predicted,
               **{b: [f.baseline(b).tolist() for f in features] for b in BASELINES}}
    rho = {name: mean_finite([spearman(s, y) for s, y in zip(values, ranks, strict=True)])
           for name, values in signals.items()}
    ratios = sorted({r for c in chains for r in c.kept}, reverse=True)
    overlap = {name: {str(r): mean_finite([keep_overlap(s, c.kept[r])
                                           for s, c in zip(values, chains, strict=True)
                                           if r in c.kept])
                      for r in ratios}
               for name, values in signals.items()}
    return {"spearman": rho.pop("predictor"), "spearman_baselines": rho,
            "overlap": overlap.pop("predictor"), "overlap_baselines": overlap}


def eval_predictor(pruned: str | Path, predictor_path: str | Path, model_opts, *,
                   batch_tokens: int = 8192, limit: int | None = None) -> dict:
    """`predictor eval`: compare predicted ranks with held-out greedy ranks (one summary)."""
    import time

    from cotprune.core.models import load_model

    start = time.perf_counter()
    predictor = load_predictor(str(predictor_path), model_opts.model)
    chains, _ = read_greedy(pruned, limit)
    model, tokenizer = load_model(model_opts)
    predictor.check_model(model)
    features = chain_features(model, tokenizer, [c.layout for c in chains],
                              batch_tokens=batch_tokens)
    return {"command": "predictor eval", "chains": len(chains),
            "tokens": sum(len(c.layout.cot_ids) for c in chains),
            **evaluate(predictor, chains, features),
            "seconds": round(time.perf_counter() - start, 3)}
