"""predictor: features == score engine, rank targets and Spearman by hand, training can learn,
fit/eval/prune round trip on a tiny model, refusal of a foreign pruner model, matched counts."""

import math

import pyarrow as pa
import pytest
import torch
from conftest import run_cli, summary_of

from cotprune.data.files import CHAIN_SCHEMA, read_manifest, read_table, write_table
from cotprune.pruning.predictor import load_predictor
from cotprune.pruning.ranking import (
    EVAL_EVERY,
    FitOptions,
    average_ranks,
    greedy_ranks,
    keep_overlap,
    spearman,
    train_ranknet,
    validation_split,
)

CHAINS = [
    {"id": "a", "question": "What is 3+4?", "cot": "We add 3 and 4 to get 7, so seven.",
     "answer": "7", "reference": "7"},
    {"id": "b", "question": "Tom has 5 pens and buys 2.",
     "cot": "He had 5. He buys 2, so 5 + 2 = 7 pens now.", "answer": "7", "reference": "7"},
    {"id": "c", "question": "Half of 12?", "cot": "12 / 2 = 6. Check: 6 * 2 = 12.",
     "answer": "6", "reference": None},
]


@pytest.fixture(scope="module")
def chains_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "chains.parquet"
    write_table(pa.Table.from_pylist(CHAINS, schema=CHAIN_SCHEMA), path)
    return path


@pytest.fixture(scope="module")
def greedy_file(chains_path, tiny_gpt2_model):
    out = chains_path.parent / "greedy.parquet"
    code, _, err = run_cli("prune", chains_path, "-o", out, "--model", tiny_gpt2_model,
                           "--device", "cpu", "--method", "greedy", "--keep", "0.7,0.5")
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def predictor_file(greedy_file, tiny_gpt2_model):
    out = greedy_file.parent / "pred.safetensors"
    code, stdout, err = run_cli("predictor", "fit", greedy_file, "-o", out, "--epochs", "60",
                                "--device", "cpu")  # --model comes from the greedy manifest
    assert code == 0, err
    s = summary_of(stdout)
    assert s["chains"] == 3 and s["tokens"] > 20 and s["arch"] == "mlp"
    return out


# --- pure pieces ---

def test_spearman_against_hand_computed_values():
    # ranks differ by d = (0, 1, 1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    # ties: ranks (0.5, 0.5, 2) vs (0, 1, 2): cov 1.5, var 1.5 and 2 -> 1.5 / sqrt(3)
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(3))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [2.5, 0.0, 2.5, 1.0]


def test_greedy_ranks_tie_the_never_deleted_tokens_after_the_deleted():
    # n = 4, deleted 2 then 0; tokens 1 and 3 survive and share ranks 2 and 3 -> 2.5 / 4
    assert greedy_ranks([2, 0], 4) == [0.25, 0.625, 0.0, 0.625]
    assert greedy_ranks([1, 0, 2], 3) == [1 / 3, 0.0, 2 / 3]


def test_keep_overlap_keeps_the_highest_scores():
    assert keep_overlap([0.1, 0.9, 0.5, 0.7], [1, 3]) == 1.0
    assert keep_overlap([0.1, 0.9, 0.5, 0.7], [0, 3]) == 0.5
    assert keep_overlap([0.3, 0.2], []) == 1.0


@pytest.mark.parametrize("arch,loss", [("mlp", "pairwise"), ("linear", "mse"),
                                       ("mlp", "mse"), ("linear", "pairwise")])
def test_training_recovers_a_rank_that_one_feature_determines(arch, loss):
    gen = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for n in (7, 12, 20, 9):
        x = torch.randn(n, 5, generator=gen) * torch.tensor([3.0, 1, 1, 1, 1]) + 4
        order = sorted(range(n), key=lambda i: float(x[i, 0]))  # low feature 0 deleted first
        xs.append(x)
        ys.append(greedy_ranks(order[:n - 2], n))
    fit = train_ranknet(xs, ys, FitOptions(arch=arch, loss=loss, epochs=150, lr=0.05,
                                           val_fraction=0))
    net, curve = fit.net, fit.curve
    assert curve[-1] < curve[0] and fit.epochs == 150 and fit.val_spearman is None
    with torch.no_grad():
        rhos = [spearman(net(x).tolist(), y) for x, y in zip(xs, ys, strict=True)]
    assert min(rhos) > 0.9, rhos


def test_validation_picks_the_epoch_count_then_refits_on_every_chain():
    gen = torch.Generator().manual_seed(1)
    xs, ys = [], []
    for n in [8, 11, 14, 9, 12, 10, 13, 7, 15, 9]:
        x = torch.randn(n, 4, generator=gen)
        order = sorted(range(n), key=lambda i: float(x[i, 0] + 0.5 * x[i, 1]))
        xs.append(x)
        ys.append(greedy_ranks(order, n))
    opts = FitOptions(arch="mlp", epochs=60, lr=0.05, val_fraction=0.2)
    train, val = validation_split(len(ys), 0.2, 0)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    fit = train_ranknet(xs, ys, opts)
    assert fit.epochs % EVAL_EVERY == 0 and 0 < fit.epochs <= 60
    assert fit.val_spearman > 0.8
    assert len(fit.curve) == fit.epochs  # the final fit ran exactly the chosen epochs
    # the final fit is a plain fit of every chain for that many epochs (same seed, same result)
    plain = train_ranknet(xs, ys, FitOptions(arch="mlp", epochs=fit.epochs, lr=0.05,
                                             val_fraction=0))
    x = torch.cat(xs)
    assert torch.allclose(fit.net(x), plain.net(x))


# --- features ---

def test_features_agree_with_the_score_engine(tiny_gpt2_model):
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout, token_texts
    from cotprune.pruning.predictor import chain_features
    from cotprune.scoring.score import score_batch

    model, tok = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu"))
    layouts = [ChainLayout(tok).layout(c["question"], c["cot"], c["answer"]) for c in CHAINS]
    together = chain_features(model, tok, layouts)
    alone = [chain_features(model, tok, [x], batch_tokens=1)[0] for x in layouts]
    scores = score_batch(model, tok, layouts, ["surprisal", "entropy", "attention"])
    for x, f, g, s in zip(layouts, together, alone, scores, strict=True):
        n = len(x.cot_ids)
        assert f.answer.shape == f.later.shape == (2, n) and f.matrix().shape == (n, 9)
        texts = token_texts(tok, x.cot_ids)
        assert f.lexical[0].tolist() == [float(any(c.isdigit() for c in t)) for t in texts]
        assert f.lexical[1].tolist() == [float(t[:1] in (" ", "\n")) for t in texts]
        assert f.answer.mean(0).tolist() == pytest.approx(s["attention"], abs=1e-6)
        assert f.surprisal.tolist() == pytest.approx(s["surprisal"], abs=1e-4)
        assert f.entropy.tolist() == pytest.approx(s["entropy"], abs=1e-4)
        assert f.position.tolist() == pytest.approx([t / (n - 1) for t in range(n)])
        assert f.later[:, -1].tolist() == [0.0, 0.0]  # the last CoT token has no later CoT
        assert torch.allclose(f.matrix(), g.matrix(), atol=1e-4)  # padding changes nothing


# --- the commands ---

def test_eval_reports_spearman_baselines_and_overlaps(greedy_file, predictor_file):
    code, stdout, err = run_cli("predictor", "eval", greedy_file, "--predictor", predictor_file,
                                "--device", "cpu")
    assert code == 0, err
    s = summary_of(stdout)
    assert s["chains"] == 3 and -1 <= s["spearman"] <= 1
    assert set(s["spearman_baselines"]) == {"attention", "surprisal", "entropy", "position",
                                            "digit"}
    assert set(s["overlap"]) == {"0.7", "0.5"}
    assert all(0 <= v <= 1 for v in s["overlap"].values())
    # a reference for the position baseline straight from the file
    rows = {r["id"]: r for r in read_table(greedy_file).to_pylist()}
    ref = []
    for r in rows.values():
        n = r["cot_end"] - r["cot_start"]
        ref.append(spearman(list(range(n)), greedy_ranks(r["prune_order"], n)))
    assert s["spearman_baselines"]["position"] == pytest.approx(sum(ref) / len(ref), abs=1e-4)


@pytest.mark.parametrize("repredict", [None, "2"])
def test_predicted_pruning_keeps_floor_keep_n_in_predicted_order(chains_path, predictor_file,
                                                                  tiny_gpt2_model, tmp_path,
                                                                  repredict):
    out = tmp_path / "p.parquet"
    extra = ["--repredict-every", repredict] if repredict else []
    code, stdout, err = run_cli("prune", chains_path, "-o", out, "--model", tiny_gpt2_model,
                                "--device", "cpu", "--method", "predicted", "--predictor",
                                predictor_file, "--keep", "0.9,0.7,0.5,0.0", *extra)
    assert code == 0, err
    rows = read_table(out).to_pylist()
    assert summary_of(stdout)["rows"] == len(rows) == 12
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import Layout
    from cotprune.pruning.predictor import chain_features

    model, tok = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu"))
    pred = load_predictor(str(predictor_file), str(tiny_gpt2_model))
    for r in rows:
        n = r["original_tokens"]
        assert r["method"] == "predicted"
        assert r["kept_tokens"] == math.floor(r["keep_ratio"] * n + 1e-9)
        assert r["kept_tokens"] == len(r["kept_positions"])
        if repredict is None:  # plain reference: keep the highest-scored tokens
            lay = Layout(r["input_ids"], r["cot_start"], r["cot_end"], r["answer_start"],
                         r["answer_end"])
            scores = pred.scores(chain_features(model, tok, [lay]))[0]
            by_score = sorted(range(n), key=lambda i: (scores[i], i))
            assert r["kept_positions"] == sorted(by_score[n - r["kept_tokens"]:])


def test_dynamic_order_with_large_k_equals_static_and_respects_protection(tiny_gpt2_model,
                                                                          predictor_file):
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout

    model, tok = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu"))
    pred = load_predictor(str(predictor_file), str(tiny_gpt2_model))
    lay = ChainLayout(tok).layout(CHAINS[1]["question"], CHAINS[1]["cot"], CHAINS[1]["answer"])
    n = len(lay.cot_ids)
    static = pred.order(model, tok, lay, frozenset())
    assert sorted(static) == list(range(n))
    assert pred.order(model, tok, lay, frozenset(), repredict_every=n) == static
    dynamic = pred.order(model, tok, lay, frozenset({0, 3}), repredict_every=3)
    assert sorted(dynamic) == [i for i in range(n) if i not in (0, 3)]
    assert dynamic[0] == next(i for i in static if i not in (0, 3))  # first chunk: same forward


def test_artifact_refuses_another_pruner_model(chains_path, predictor_file, tiny_qwen_model,
                                               tmp_path):
    out = tmp_path / "x.parquet"
    code, _, err = run_cli("prune", chains_path, "-o", out, "--model", tiny_qwen_model,
                           "--device", "cpu", "--method", "predicted", "--predictor",
                           predictor_file)
    assert code == 2 and "fitted for pruner model" in err
    assert not out.exists()
    code, _, err = run_cli("predictor", "eval", chains_path, "--predictor", predictor_file,
                           "--model", tiny_qwen_model)
    assert code == 2 and "fitted for pruner model" in err


def test_bad_inputs_exit_2(chains_path, tiny_gpt2_model, tmp_path):
    not_pred = tmp_path / "junk.safetensors"
    not_pred.write_bytes(b"definitely not safetensors")
    code, _, err = run_cli("prune", chains_path, "-o", tmp_path / "o.parquet", "--model",
                           tiny_gpt2_model, "--method", "predicted", "--predictor", not_pred)
    assert code == 2 and "not a predictor file" in err
    code, _, err = run_cli("predictor", "fit", chains_path, "-o", tmp_path / "p.safetensors",
                           "--model", tiny_gpt2_model)  # chains, not greedy output
    assert code == 2 and "prune_order" in err
    assert not (tmp_path / "p.safetensors").exists()
    code, _, err = run_cli("predictor", "fit", chains_path, "-o", tmp_path / "p.safetensors",
                           "--arch", "transformer")
    assert code == 2 and "--arch" in err


def test_fit_uses_the_adapter_that_pruning_used(greedy_file, tiny_gpt2_model, tmp_path,
                                                monkeypatch):
    """The greedy manifest names model and adapter; features must come from both."""
    from peft import LoraConfig, get_peft_model

    import cotprune.core.models as models
    from cotprune.core.models import ModelOptions, load_model

    adapter = tmp_path / "adapter"
    base, _ = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu"))
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(
        adapter)
    table = read_table(greedy_file)
    manifest = {**read_manifest(greedy_file), "adapter": str(adapter)}
    adapted = tmp_path / "greedy-with-adapter.parquet"
    write_table(table, adapted, manifest)

    loaded = []
    real = models.load_model

    def spy(opts, **kw):
        loaded.append((opts.model, opts.adapter))
        return real(opts, **kw)

    monkeypatch.setattr(models, "load_model", spy)
    code, _, err = run_cli("predictor", "fit", adapted, "-o", tmp_path / "p.safetensors",
                           "--epochs", "2", "--device", "cpu")
    assert code == 0, err
    assert loaded == [(str(tiny_gpt2_model), str(adapter))]


def test_fit_with_a_bad_model_exits_2_and_writes_nothing(greedy_file, tmp_path):
    out = tmp_path / "p.safetensors"
    code, _, err = run_cli("predictor", "fit", greedy_file, "-o", out, "--model",
                           "/no/such/model", "--device", "cpu")
    assert code == 2 and "/no/such/model" in err
    assert list(tmp_path.iterdir()) == []


def test_greedy_with_the_predictor_as_prior_scores_a_shortlist(chains_path, predictor_file,
                                                               tiny_gpt2_model, tmp_path):
    """--method greedy --predictor P --shortlist M: greedy rows, fewer tokens than exact
    greedy (the summary counts the prior's forwards too), the trace exact J."""
    out = tmp_path / "guided.parquet"
    code, stdout, err = run_cli("prune", chains_path, "-o", out, "--model", tiny_gpt2_model,
                                "--device", "cpu", "--method", "greedy", "--predictor",
                                predictor_file, "--shortlist", "2", "--keep", "0.7,0.5")
    assert code == 0, err
    guided = summary_of(stdout)
    exact_code, exact_out, _ = run_cli("prune", chains_path, "-o", tmp_path / "exact.parquet",
                                       "--model", tiny_gpt2_model, "--device", "cpu",
                                       "--keep", "0.7,0.5")
    assert exact_code == 0
    assert guided["tokens_run"] < summary_of(exact_out)["tokens_run"]
    rows = read_table(out).to_pylist()
    assert len(rows) == 6 and {r["method"] for r in rows} == {"greedy"}
    for r in rows:
        assert r["kept_tokens"] == len(r["kept_positions"])


def test_greedy_with_a_prior_in_lockstep_prunes_as_one_chain_at_a_time(chains_path,
                                                                       predictor_file,
                                                                       tiny_gpt2_model, tmp_path):
    """The prior's feature forwards go through the lockstep rounds too (`runner.call`): the
    same deletions and counts as without --lockstep, in fewer forwards."""
    args = ["--model", tiny_gpt2_model, "--device", "cpu", "--method", "greedy", "--predictor",
            predictor_file, "--shortlist", "2", "--keep", "0.5"]
    runs = []
    for extra in ([], ["--lockstep", "3"]):
        out = tmp_path / f"prior{len(extra)}.parquet"
        code, stdout, err = run_cli("prune", chains_path, "-o", out, *args, *extra)
        assert code == 0, err
        runs.append((summary_of(stdout), read_table(out).to_pylist()))
    (alone, want), (side, got) = runs
    assert [r["prune_order"] for r in got] == [r["prune_order"] for r in want]
    assert side["projection_rows"] == alone["projection_rows"]
    assert side["forwards"] < alone["forwards"]


def test_greedy_with_a_predictor_needs_a_shortlist(chains_path, predictor_file,
                                                   tiny_gpt2_model, tmp_path):
    out = tmp_path / "g.parquet"
    code, _, err = run_cli("prune", chains_path, "-o", out, "--model", tiny_gpt2_model,
                           "--device", "cpu", "--method", "greedy", "--predictor",
                           predictor_file)
    assert code == 2 and "--shortlist" in err and not out.exists()
