"""Predicted pruning against greedy: held-out Spearman, J at matched lengths, seconds per chain.

Trains the rank predictor on greedy-pruned chains (`--train`, one or more `prune --method greedy`
files), then on held-out greedy chains (`--test`, ideally exact greedy):

- mean per-chain Spearman of predicted vs greedy ranks for each predictor variant (mlp/linear x
  pairwise/mse), and of each raw feature alone (attention, surprisal, entropy, position);
- J (reason-answer NLL, nats) at each keep ratio of the test file, summed over the test chains,
  for greedy (the file's `objective_nll`), predicted (static and `--repredict-every K`),
  attention, surprisal and random pruning, all at floor(keep * n) kept tokens;
- seconds per chain of predicted pruning (order + J of every ratio) against exact greedy
  (`greedy_prune` + J), both timed in this run on the first `--timing-chains` test chains.

    .venv/bin/python bench/predictor.py --train A.parquet,B.parquet --test EXACT.parquet
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cross_validate(chains, features, folds: int, epochs: int, layers: int) -> dict:
    """k-fold (by chain) mean Spearman of each variant and baseline on the training chains."""
    from cotprune.pruning.predictor import (
        BASELINES,
        Predictor,
        PredictorSpec,
        evaluate,
        feature_names,
    )
    from cotprune.pruning.ranking import FitOptions, train_ranknet

    sums: dict[str, list[float]] = {}
    for k in range(folds):
        test = [i for i in range(len(chains)) if i % folds == k]
        train = [i for i in range(len(chains)) if i % folds != k]
        if not test or not train:
            continue
        for arch in ("mlp", "linear"):
            for loss in ("pairwise", "mse"):
                net = train_ranknet([features[i].matrix() for i in train],
                                       [chains[i].ranks for i in train],
                                       FitOptions(arch=arch, loss=loss, epochs=epochs)).net
                spec = PredictorSpec(pruner_model="", layers=layers,
                                     feature_names=feature_names(layers), arch=arch, hidden=64,
                                     loss=loss)
                p = Predictor(spec, net)
                res = evaluate(p, [chains[i] for i in test], [features[i] for i in test])
                sums.setdefault(f"{arch}-{loss}", []).append(res["spearman"] * len(test))
        for b in BASELINES:
            sums.setdefault(b, []).append(res["spearman_baselines"][b] * len(test))
    return {name: round(sum(v) / len(chains), 4) for name, v in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="comma-separated greedy files")
    ap.add_argument("--test", required=True, help="held-out greedy file (exact greedy)")
    ap.add_argument("--repredict-every", type=int, default=4)
    ap.add_argument("--timing-chains", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()

    from cotprune.core.deletion import DeletionScorer
    from cotprune.core.engine import sequence_objectives
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.files import read_table
    from cotprune.data.layout import join_segments
    from cotprune.pruning.greedy import greedy_prune, kept_positions
    from cotprune.pruning.predictor import (
        Predictor,
        PredictorSpec,
        chain_features,
        evaluate,
        feature_names,
        read_greedy,
    )
    from cotprune.pruning.prune import kept_count, order_by_scores, random_order
    from cotprune.pruning.ranking import FitOptions, train_ranknet
    from cotprune.scoring.score import score_batch

    model, tok = load_model(ModelOptions(model=args.model, device="cpu"))
    train = [c for f in args.train.split(",") for c in read_greedy(f)[0]]
    test, _ = read_greedy(args.test)
    train_ids = {c.id for c in train}
    test = [c for c in test if c.id not in train_ids]
    layers = model.config.num_hidden_layers
    (train_f, test_f), feat_s = timed(lambda: [
        chain_features(model, tok, [c.layout for c in cs], batch_tokens=args.batch_tokens)
        for cs in (train, test)])
    print(f"features: {len(train)} train + {len(test)} test chains in {feat_s:.1f}s",
          file=sys.stderr, flush=True)

    xs, ys = [f.matrix() for f in train_f], [c.ranks for c in train]
    variants = {}
    for arch in ("mlp", "linear"):
        for loss in ("pairwise", "mse"):
            opts = FitOptions(arch=arch, loss=loss, epochs=args.epochs)
            net = train_ranknet(xs, ys, opts).net
            spec = PredictorSpec(pruner_model=args.model, layers=layers,
                                 feature_names=feature_names(layers), arch=arch,
                                 hidden=opts.hidden, loss=loss)
            variants[f"{arch}-{loss}"] = Predictor(spec, net)
    held_out = {name: evaluate(p, test, test_f) for name, p in variants.items()}
    cv = cross_validate(train, train_f, args.folds, args.epochs, layers)
    train_fit = {name: evaluate(p, train, train_f)["spearman"] for name, p in variants.items()}
    predictor = variants["mlp-pairwise"]

    ratios = sorted({r for c in test for r in c.kept}, reverse=True)
    j_sums = {m: {str(r): 0.0 for r in ratios} for m in
              ("greedy", "predicted", f"predicted-K{args.repredict_every}", "attention",
               "surprisal", "random")}

    def j_of(c, order) -> dict:
        n = len(c.layout.cot_ids)
        prompt = c.layout.input_ids[:c.layout.cot_start]
        answer = c.layout.input_ids[c.layout.answer_start:c.layout.answer_end]
        lays = [join_segments(prompt, [c.layout.cot_ids[i]
                                       for i in kept_positions(n, order, kept_count(r, n))],
                              answer) for r in ratios]
        js = sequence_objectives(model, lays, "reason-answer", batch_tokens=args.batch_tokens,
                                 pad_id=tok.pad_token_id)
        return dict(zip(map(str, ratios), js, strict=True))

    table = read_table(args.test)
    greedy_j = {(r["id"], round(r["keep_ratio"], 6)): r["objective_nll"]
                for r in table.select(["id", "keep_ratio", "objective_nll"]).to_pylist()}
    predicted_s = []
    for c in test:
        n = len(c.layout.cot_ids)
        for r in ratios:
            j_sums["greedy"][str(r)] += greedy_j[(c.id, r)]
        order_js, s = timed(lambda c=c: j_of(c, predictor.order(model, tok, c.layout,
                                                                frozenset())))
        predicted_s.append(s)
        orders = {
            f"predicted-K{args.repredict_every}": predictor.order(
                model, tok, c.layout, frozenset(), repredict_every=args.repredict_every),
            "random": random_order(n, 0, c.id, frozenset()),
        }
        scores = score_batch(model, tok, [c.layout], ["attention", "surprisal"])[0]
        for m in ("attention", "surprisal"):
            orders[m] = order_by_scores(scores[m], frozenset())
        for m, js in [("predicted", order_js), *[(m, j_of(c, o)) for m, o in orders.items()]]:
            for r, j in js.items():
                j_sums[m][r] += j
    print("J done", file=sys.stderr, flush=True)

    greedy_s, paired_predicted_s = [], []
    for c in test[:args.timing_chains]:
        n = len(c.layout.cot_ids)
        scorer = DeletionScorer(model, "reason-answer", args.batch_tokens)
        _, s = timed(lambda c=c: j_of(c, predictor.order(model, tok, c.layout, frozenset())))
        paired_predicted_s.append(s)  # timed right before greedy, on the same chain
        _, s = timed(lambda c=c, n=n, scorer=scorer: j_of(c, greedy_prune(
            scorer, c.layout.input_ids[:c.layout.cot_start], c.layout.cot_ids,
            c.layout.input_ids[c.layout.answer_start:], n - kept_count(min(ratios), n)).order))
        greedy_s.append(s)
        print(f"exact greedy chain ({n} CoT tokens): {s:.1f}s", file=sys.stderr, flush=True)
    k = len(greedy_s)
    gap = {r: (j_sums["attention"][r] - j_sums["greedy"][r]) for r in map(str, ratios)}
    report = {
        "train": {"chains": len(train), "tokens": sum(len(y) for y in ys)},
        "test": {"chains": len(test), "tokens": sum(len(c.layout.cot_ids) for c in test)},
        "feature_seconds": round(feat_s, 2),
        "held_out": held_out,
        "cross_validated_on_train_files": cv,
        "train_spearman": train_fit,
        "sum_J": {m: {r: round(v, 3) for r, v in d.items()} for m, d in j_sums.items()},
        "gap_closed_vs_best_static": {
            m: {r: round((best - j_sums[m][r]) / (best - j_sums["greedy"][r]), 3)
                if (best := min(j_sums["attention"][r], j_sums["surprisal"][r]))
                != j_sums["greedy"][r] else None for r in map(str, ratios)}
            for m in ("predicted", f"predicted-K{args.repredict_every}")},
        "attention_gap_to_greedy": {r: round(v, 3) for r, v in gap.items()},
        "seconds_per_chain": {
            "predicted_static": round(sum(paired_predicted_s) / max(k, 1), 2),
            "predicted_static_all_test_chains": round(sum(predicted_s) / len(predicted_s), 2),
            "predicted_first_pass": [round(v, 2) for v in predicted_s],
            "predicted_paired": [round(v, 2) for v in paired_predicted_s],
            "exact_greedy_each": [round(v, 2) for v in greedy_s],
            "exact_greedy": round(sum(greedy_s) / max(k, 1), 2) if k else None,
            "timing_chains": k},
        "speedup": round(sum(greedy_s) / sum(paired_predicted_s), 1) if k else None,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=1))
    assert all(math.isfinite(v) for d in j_sums.values() for v in d.values())


if __name__ == "__main__":
    main()
