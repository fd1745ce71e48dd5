"""Bingo's significance scorers inside `rl`: spec parsing, one score per response token, the
attention scorer against eager attention averaged by hand, the classifier and the predictor
against direct calls, and short `rl --reward bingo` runs on tiny models."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch
from conftest import TOKENIZERS, run_cli

from cotprune.data.files import CHAIN_SCHEMA, write_table
from cotprune.data.layout import ChainLayout, decode, join_segments
from cotprune.data.synth import synth_arithmetic
from cotprune.errors import InputError
from cotprune.rl.response_significance import (
    ResponseSignificance,
    SignificanceSpec,
    parse_significance,
)
from cotprune.rl.rewards import significance_counts
from cotprune.training.sampling import stop_token_ids

COT = "Let me add 3 and 4. So 3 + 4 = 7, and 7 is odd."
ANSWER = "\nThe answer is 7"
NO_MARKER = "I think it is 3 + 4 which makes 7 in total."


def _model(path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval()


@pytest.fixture(scope="module")
def gpt2_setup(tiny_gpt2_model):
    """(model, tokenizer, stop ids, prompts, responses, k of the marked response)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_model)
    layout = ChainLayout(tok)
    stop = stop_token_ids(tok, layout)
    prompt = layout.prompt_ids("What is 3 + 4?")
    cot = tok(COT, add_special_tokens=False)["input_ids"]
    answer = tok(ANSWER, add_special_tokens=False)["input_ids"]
    free = tok(NO_MARKER, add_special_tokens=False)["input_ids"]
    responses = [cot + answer + [stop[0]],  # stopped, with the answer marker
                 free,                      # truncated, no marker
                 free[:5] + [stop[0]],      # stopped, no marker
                 [stop[0]],                 # only the stop token
                 tok("The answer is 7.", add_special_tokens=False)["input_ids"] + [stop[0]]]
    prompts = [prompt, prompt[:-1], prompt, prompt, prompt]  # the last: no CoT before the marker
    return _model(tiny_gpt2_model), tok, stop, prompts, responses, len(cot)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A random 1-layer GPT-2 token classifier (2 labels) saved with the GPT-2 tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForTokenClassification

    path = tmp_path_factory.mktemp("tiny-classifier")
    tok = AutoTokenizer.from_pretrained(TOKENIZERS / "gpt2", add_prefix_space=True)
    tok.pad_token = tok.eos_token
    torch.manual_seed(1)
    model = GPT2ForTokenClassification(GPT2Config(
        vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64, num_labels=2,
        pad_token_id=tok.eos_token_id))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def predictor_path(tiny_gpt2_model, gpt2_setup, tmp_path_factory):
    """A predictor fitted (a few epochs) on the tiny model's features of three chains."""
    from cotprune.pruning.predictor import (
        PredictorSpec,
        chain_features,
        feature_names,
        model_key,
        save_predictor,
    )
    from cotprune.pruning.ranking import FitOptions, train_ranknet

    model, tok, *_ = gpt2_setup
    layout = ChainLayout(tok)
    layouts = [layout.layout(q, c, a) for q, c, a in
               [("What is 3+4?", COT, "7"), ("Half of 12?", "12 / 2 = 6. Check: 6 * 2 = 12.",
                                              "6"), ("Five plus two?", NO_MARKER, "7")]]
    feats = chain_features(model, tok, layouts)
    xs = [f.matrix() for f in feats]
    ys = [torch.linspace(0, 1, len(f.position)).flip(0).tolist() for f in feats]
    net = train_ranknet(xs, ys, FitOptions(epochs=5)).net
    spec = PredictorSpec(pruner_model=model_key(str(tiny_gpt2_model)), layers=2,
                         feature_names=feature_names(2), arch="mlp", hidden=64, loss="pairwise")
    path = tmp_path_factory.mktemp("pred") / "pred.safetensors"
    save_predictor(path, spec, net)
    return path


def _scorer(spec, model_name, setup):
    model, tok, stop, *_ = setup
    scorer = ResponseSignificance(spec, str(model_name))
    scorer.bind(model, tok, stop, batch_tokens=64)
    return scorer


# --- parsing ---

@pytest.mark.parametrize("spec", ["nope", "predictor", "predictor:", "model:", "model",
                                  "attention:x", "surprisal:y", "predictor:/no/such/file",
                                  "model:/no/such/dir", ""])
def test_bad_specs_are_input_errors(spec):
    with pytest.raises(InputError):
        parse_significance(spec)


def test_good_specs_parse(predictor_path, classifier_dir):
    assert parse_significance("attention") == SignificanceSpec("attention")
    assert parse_significance("surprisal") == SignificanceSpec("surprisal")
    assert parse_significance(f"predictor:{predictor_path}").path == str(predictor_path)
    assert parse_significance(f"model:{classifier_dir}").kind == "model"


# --- every scorer: one score per token, counts add up ---

@pytest.mark.parametrize("kind", ["surprisal", "attention", "predictor", "model"])
def test_one_score_per_response_token(kind, gpt2_setup, tiny_gpt2_model, predictor_path,
                                      classifier_dir):
    model, _, _, prompts, responses, _ = gpt2_setup
    path = {"predictor": str(predictor_path), "model": str(classifier_dir)}.get(kind)
    scorer = _scorer(SignificanceSpec(kind, path), tiny_gpt2_model, gpt2_setup)
    scores = scorer.scores(model, prompts, responses)
    assert [len(s) for s in scores] == [len(r) for r in responses]
    assert all(all(x == x for x in s) for s in scores)  # no NaN
    assert len(set(scores[0])) > 3  # the scores vary along a response
    counts = scorer.counts(model, prompts, responses, 0.5)
    assert [lo + hi for lo, hi in counts] == [len(r) for r in responses]
    assert counts == [significance_counts(s, 0.5) for s in scores]


def test_attention_equals_eager_attention_averaged_by_hand(tiny_qwen_model):
    from transformers import AutoTokenizer

    from cotprune.rl.response_significance import response_attention

    tok = AutoTokenizer.from_pretrained(tiny_qwen_model)
    layout = ChainLayout(tok)
    prompts = [layout.prompt_ids("What is 3 + 4?"), layout.prompt_ids("Half of 12, please?")]
    responses = [tok(COT + ANSWER, add_special_tokens=False)["input_ids"],
                 tok("12 / 2 = 6.", add_special_tokens=False)["input_ids"]]
    got = response_attention(_model(tiny_qwen_model), prompts, responses, 0, batch_tokens=4096)
    eager = _model(tiny_qwen_model, attn_implementation="eager")
    for prompt, response, scores in zip(prompts, responses, got, strict=True):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            att = eager(input_ids=ids, output_attentions=True).attentions  # [1, heads, n, n] each
        start, end = len(prompt), len(prompt) + len(response)
        expected = []
        for t in range(start, end):
            values = [float(a[0, h, q, t]) for a in att for h in range(a.shape[1])
                      for q in range(t + 1, end)]
            expected.append(sum(values) / len(values) if values else 0.0)
        assert len(scores) == len(response)
        assert max(abs(a - b) for a, b in zip(scores, expected, strict=True)) < 1e-5


def test_classifier_counts_equal_a_direct_significance_model_call(gpt2_setup, tiny_gpt2_model,
                                                                  classifier_dir):
    from cotprune.scoring.significance_model import SignificanceModel

    model, tok, stop, prompts, responses, _ = gpt2_setup
    scorer = _scorer(SignificanceSpec("model", str(classifier_dir)), tiny_gpt2_model, gpt2_setup)
    direct = SignificanceModel(str(classifier_dir), torch.device("cpu"))
    got = scorer.counts(model, prompts, responses, 0.5)
    for response, counts in zip(responses, got, strict=True):
        content = response[:-1] if response[-1] in stop else response
        scores = direct.token_scores(tok, [decode(tok, content)], [content])[0]
        if len(content) < len(response):  # the stop token gets the response's highest score
            scores = scores + [max(scores, default=0.0)]
        assert counts == significance_counts(scores, 0.5)
    assert got[1][0] > 0 and got[1][1] > 0


def test_predictor_scores_the_cot_and_tops_the_answer(gpt2_setup, tiny_gpt2_model,
                                                      predictor_path):
    from cotprune.pruning.predictor import chain_features, read_predictor

    model, tok, _, prompts, responses, k = gpt2_setup
    scorer = _scorer(SignificanceSpec("predictor", str(predictor_path)), tiny_gpt2_model,
                     gpt2_setup)
    got = scorer.scores(model, prompts, responses)
    predictor = read_predictor(predictor_path)
    response = responses[0]
    chain = join_segments(prompts[0], response[:k], response[k:])  # split at the marker by hand
    cot_scores = predictor.scores(chain_features(model, tok, [chain]))[0]
    assert got[0][:k] == pytest.approx(cot_scores, abs=1e-6)
    assert got[0][k:] == [max(cot_scores)] * (len(response) - k)
    # without a marker the whole response is CoT, followed by the layout's canonical answer
    free = responses[1]
    chain = join_segments(prompts[1], free, ChainLayout(tok).answer_ids("7"))
    assert got[1] == pytest.approx(predictor.scores(chain_features(model, tok, [chain]))[0],
                                   abs=1e-6)
    assert got[4] == [0.0] * len(responses[4])  # all answer: no CoT score to top


def test_predictor_for_another_model_is_refused(predictor_path, tiny_qwen_model):
    with pytest.raises(InputError, match="fitted for pruner model"):
        ResponseSignificance(SignificanceSpec("predictor", str(predictor_path)),
                             str(tiny_qwen_model))


# --- the command ---

def _prompts(tmp_path):
    path = tmp_path / "prompts.parquet"
    write_table(pa.Table.from_pylist(synth_arithmetic(2, seed=0), schema=CHAIN_SCHEMA), path)
    return path


ONE_STEP = ["--max-steps", "1", "--prompts-per-step", "2", "--samples", "2",
            "--max-new-tokens", "6", "--reward", "bingo", "--device", "cpu"]


def test_cli_bingo_with_each_scorer(tiny_gpt2_model, classifier_dir, predictor_path, tmp_path):
    prompts = _prompts(tmp_path)
    for name, flags in [("att", ["attention"]),
                        ("cls", ["model", "--significance-model", classifier_dir]),
                        ("pred", ["predictor", "--predictor", predictor_path])]:
        out = tmp_path / name
        code, _, err = run_cli("rl", prompts, "-o", out, "--model", tiny_gpt2_model, *ONE_STEP,
                               "--significance", *flags)
        assert code == 0, err
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1] and "bingo_w" in metrics[0]


def test_cli_bad_significance_exits_2_without_output(tiny_qwen_model, predictor_path, tmp_path):
    prompts = _prompts(tmp_path)
    for flags, named in [
            (["bogus"], "--significance"), (["predictor"], "--predictor"),
            (["model"], "--significance-model"),
            (["predictor", "--predictor", tmp_path / "none.st"], "--predictor"),
            (["attention", "--predictor", predictor_path], "--predictor"),
            (["predictor", "--predictor", predictor_path], "predictor")]:  # for another model
        out = tmp_path / "out"
        code, _, err = run_cli("rl", prompts, "-o", out, "--model", tiny_qwen_model, *ONE_STEP,
                               "--significance", *flags)
        assert code == 2 and named in err, (flags, err)
        assert not out.exists()
