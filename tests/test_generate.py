"""`generate` and `eval`: response splitting, stopping, rejection sampling, grading, resume."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest
from conftest import run_cli, summary_of

from cotprune import generate as gen_stage
from cotprune.files import CHAIN_SCHEMA, read_table, write_table
from cotprune.generation import (
    Response,
    SamplingOptions,
    finish_response,
    pad_left,
    ratio_question,
    split_response,
)

# --- pure pieces -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, cot, answer", [
    ("Add 2 and 3 to get 5.\nThe answer is 5", "Add 2 and 3 to get 5.", "5"),
    ("2+3=5. The answer is 5.\n", "2+3=5.", "5"),
    ("so \\boxed{\\frac12}", "so \\boxed{\\frac12}", "\\frac12"),
    ("I am not sure", "I am not sure", None),
    ("x\nThe answer is 4\nThe answer is 6", "x\nThe answer is 4", "6"),
])
def test_split_response(text, cot, answer):
    assert split_response(text) == (cot, answer)


def test_split_response_with_custom_marker():
    assert split_response("work work\nFinal: 12", marker="\nFinal: ") == ("work work", "12")


def test_finish_response_stop_pad_and_truncation():
    stop, pad = [9], 0
    assert finish_response([5, 6, 9, 0, 0], stop, 5, pad) == ([5, 6], 3, False)
    assert finish_response([5, 6, 7, 8, 4], stop, 5, pad) == ([5, 6, 7, 8, 4], 5, True)
    # ended by the batch's width, not by the budget: not truncated, pads not counted
    assert finish_response([5, 6, 0, 0], stop, 8, pad) == ([5, 6], 2, False)


def test_pad_left_aligns_ends():
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_sampling_options_name_the_flag():
    from cotprune.errors import InputError

    with pytest.raises(InputError, match="--top-p"):
        SamplingOptions(top_p=0)
    with pytest.raises(InputError, match="--samples"):
        SamplingOptions(samples=2, temperature=0)


def test_ratio_question_format():
    assert ratio_question("Q?", 0.5) == "Q?\n<keep ratio 0.5>"
    assert ratio_question("Q?", 0.7000001) == "Q?\n<keep ratio 0.7>"
    assert ratio_question("Q?", None) == "Q?"


# --- on a tiny model -------------------------------------------------------------------------

def test_left_padded_batch_equals_one_by_one(tiny_qwen_model):
    """Greedy continuations do not depend on which other prompts share the batch."""
    from cotprune.generation import generate_batch, stop_token_ids
    from cotprune.layout import ChainLayout
    from cotprune.models import ModelOptions, load_model

    model, tok = load_model(ModelOptions(str(tiny_qwen_model), dtype="float32", device="cpu"))
    cl = ChainLayout(tok)
    prompts = [cl.prompt_ids("What is 2 + 2?"), cl.prompt_ids("A much longer question " * 6)]
    opts = SamplingOptions(max_new_tokens=6)
    stops = stop_token_ids(tok, cl)
    together = generate_batch(model, tok, prompts, opts, stops)
    alone = [generate_batch(model, tok, [p], opts, stops)[0] for p in prompts]
    assert together == alone
    assert all(r.generated_tokens <= 6 for g in together for r in g)


def _tiny(model_dir):
    from cotprune.models import ModelOptions, load_model

    return load_model(ModelOptions(str(model_dir), dtype="float32", device="cpu"))


def test_decode_equals_hf_generate_greedy(tiny_qwen_model):
    """The own decoding loop (rows leave the batch when they stop) gives HF generate's tokens."""
    import torch

    from cotprune.generation import decode, hf_generate

    model, _ = _tiny(tiny_qwen_model)
    torch.manual_seed(0)
    prompts = [torch.randint(3, 200, (n,)).tolist() for n in (5, 9, 3, 12)]
    opts = SamplingOptions(max_new_tokens=12)
    # Stop ids that the random model does emit, so that rows end at different steps.
    free = hf_generate(model, prompts, opts, [0], pad_id=0)
    stops = sorted({row[k] for row, k in zip(free, (2, 5, 8, 11), strict=True)})
    ours = decode(model, prompts, opts, stops, pad_id=0)
    theirs = hf_generate(model, prompts, opts, stops, pad_id=0)
    lengths = set()
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine == ref[:len(mine)]
        assert mine[-1] in stops or len(mine) == 12
        lengths.add(len(mine))
        if len(mine) < 12:  # HF pads a stopped row; ours has stopped
            assert mine[-1] in stops
    assert len(lengths) > 1, "the test needs rows that stop at different steps"


def test_decode_sampling_is_seeded_and_top_p_tiny_is_greedy(tiny_qwen_model):
    from cotprune.generation import decode

    model, _ = _tiny(tiny_qwen_model)
    prompts = [[5, 6, 7], [8, 9]]
    sampled = SamplingOptions(max_new_tokens=8, temperature=1.0, samples=3)
    a = decode(model, prompts, sampled, [1], pad_id=0, seed=4)
    assert a == decode(model, prompts, sampled, [1], pad_id=0, seed=4)
    assert a != decode(model, prompts, sampled, [1], pad_id=0, seed=5)
    assert len(a) == 6 and len({tuple(r) for r in a}) > 1
    nucleus = SamplingOptions(max_new_tokens=8, temperature=1.0, top_p=1e-6, samples=2)
    greedy = decode(model, prompts, SamplingOptions(max_new_tokens=8), [1], pad_id=0)
    assert decode(model, prompts, nucleus, [1], pad_id=0, seed=1) == \
        [greedy[0], greedy[0], greedy[1], greedy[1]]


def test_next_tokens_top_p_keeps_the_crossing_token():
    import torch

    from cotprune.generation import next_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    opts = SamplingOptions(temperature=1.0, top_p=0.6)
    g = torch.Generator().manual_seed(0)
    drawn = {int(next_tokens(logits, opts, g)) for _ in range(200)}
    assert drawn == {0, 1}


def test_generate_real_model_marks_truncation(tiny_gpt2_model, chains_file, tmp_path):
    out = tmp_path / "gen.parquet"
    code, stdout, err = run_cli("generate", chains_file, "-o", out, "--model", tiny_gpt2_model,
                                "--samples", "2", "--temperature", "1.0",
                                "--max-new-tokens", "5", "--device", "cpu")
    assert code == 0, err
    t = read_table(out).to_pylist()
    assert len(t) == 12 and summary_of(stdout)["rows"] == 12
    assert [r["id"] for r in t[:2]] == ["arith-00000#0", "arith-00000#1"]
    for r in t:
        assert r["truncated"] == (r["generated_tokens"] == 5)  # random model: never stops early
        assert r["source_id"] == r["id"].split("#")[0]


def _fake_generate(script):
    """A generate_batch stand-in: `script(question_index, sample)` -> Response; records calls."""
    calls = []

    def fake(model, tokenizer, prompts, opts, stop_ids, *, seed=None):
        calls.append(len(prompts))
        out = []
        for p in prompts:
            text = tokenizer.decode(p)
            index = int(re.search(r"Q(\d+):", text).group(1))
            out.append([script(index, s) for s in range(opts.samples)])
        return out

    return fake, calls


def _questions(tmp_path, n=4):
    rows = [{"id": f"q{i}", "question": f"Q{i}: what is {i} + {i}?", "cot": "", "answer": "",
             "reference": str(2 * i)} for i in range(n)]
    path = tmp_path / "questions.parquet"
    write_table(pa.Table.from_pylist(rows, schema=CHAIN_SCHEMA), path)
    return path


def test_keep_correct_rejection_sampling(tiny_gpt2_model, tmp_path, monkeypatch):
    def script(i, s):
        if i == 0:  # first sample wrong, second right: keep the second
            return Response(f"think\nThe answer is {2 * i + (1 - s)}", 7, False)
        if i == 1:  # right but truncated, then right and complete
            return Response(f"think\nThe answer is {2 * i}", 9, s == 0)
        if i == 2:  # always wrong: the question is dropped
            return Response("think\nThe answer is 99", 7, False)
        return Response(f"{i}+{i}={2 * i}\nThe answer is {2 * i}", 5, False)

    fake, _ = _fake_generate(script)
    monkeypatch.setattr(gen_stage, "generate_batch", fake)
    out = tmp_path / "kept.parquet"
    code, stdout, err = run_cli("generate", _questions(tmp_path), "-o", out, "--model",
                                tiny_gpt2_model, "--samples", "3", "--keep-correct")
    assert code == 0, err
    rows = read_table(out).to_pylist()
    assert [(r["id"], r["sample"]) for r in rows] == [("q0", 1), ("q1", 1), ("q3", 0)]
    assert rows[2]["cot"] == "3+3=6" and rows[2]["answer"] == "6"
    assert all(r["correct"] and not r["truncated"] for r in rows)
    assert summary_of(stdout)["dropped_questions"] == 1


def test_keep_correct_needs_reference(tiny_gpt2_model, tmp_path):
    path = tmp_path / "q.parquet"
    write_table(pa.table({"id": ["a"], "question": ["x"]}), path)
    code, _, err = run_cli("generate", path, "-o", tmp_path / "o.parquet", "--model",
                           tiny_gpt2_model, "--keep-correct")
    assert code == 2 and "reference" in err
    assert not (tmp_path / "o.parquet").exists()


def test_generate_resume_skips_finished_batches(tiny_gpt2_model, tmp_path, monkeypatch):
    def script(i, s):
        return Response(f"step {s}\nThe answer is {2 * i}", 4, False)

    questions = _questions(tmp_path, n=4)
    fake, calls = _fake_generate(script)
    monkeypatch.setattr(gen_stage, "generate_batch", fake)
    whole = tmp_path / "whole.parquet"
    common = ["--model", tiny_gpt2_model, "--samples", "2", "--max-new-tokens", "4",
              "--batch-tokens", "60"]  # 1 question per batch
    assert run_cli("generate", questions, "-o", whole, *common)[0] == 0
    assert calls == [1, 1, 1, 1]

    def dying(*a, **k):
        if len(calls) == 6:  # two batches done, then the process "dies"
            raise RuntimeError("killed")
        return fake(*a, **k)

    monkeypatch.setattr(gen_stage, "generate_batch", dying)
    part = tmp_path / "part.parquet"
    assert run_cli("generate", questions, "-o", part, *common)[0] == 1
    assert not part.exists()
    code, _, err = run_cli("generate", questions, "-o", part, *common)
    assert code == 2 and "--resume" in err
    monkeypatch.setattr(gen_stage, "generate_batch", fake)
    assert run_cli("generate", questions, "-o", part, *common, "--resume")[0] == 0
    assert len(calls) == 8  # only the two unfinished batches ran again
    assert read_table(part).drop_columns([]).equals(read_table(whole))


def test_eval_grades_and_splits_by_truncation(tiny_gpt2_model, tmp_path, monkeypatch):
    answers = {0: ("The answer is 0", False), 1: ("The answer is 2", False),
               2: ("I think the answer is 5", False), 3: ("3 + 3 = ", True)}

    def script(i, s):
        text, truncated = answers[i]
        return Response(text, 10 if truncated else 4, truncated)

    fake, _ = _fake_generate(script)
    monkeypatch.setattr(gen_stage, "generate_batch", fake)
    out = tmp_path / "eval.parquet"
    code, stdout, err = run_cli("eval", _questions(tmp_path), "-o", out, "--model",
                                tiny_gpt2_model, "--max-new-tokens", "10")
    assert code == 0, err
    s = summary_of(stdout)
    assert s["n"] == 4 and s["accuracy"] == 0.5 and s["mean_generated_tokens"] == 5.5
    assert s["truncated"] == {"n": 1, "accuracy": 0.0, "mean_generated_tokens": 10.0}
    assert s["complete"]["n"] == 3 and s["complete"]["accuracy"] == pytest.approx(2 / 3)
    rows = read_table(out)
    assert rows.schema.field("generated_tokens").type == pa.int32()
    assert rows.column("prediction").to_pylist() == ["0", "2", "5", "3"]
    assert rows.column("correct").to_pylist() == [True, True, False, False]


def test_eval_shards_concatenate_to_one_run(tiny_gpt2_model, chains_file, tmp_path):
    common = ["--model", tiny_gpt2_model, "--max-new-tokens", "3", "--device", "cpu"]
    assert run_cli("eval", chains_file, "-o", tmp_path / "one.parquet", *common)[0] == 0
    for i in range(2):
        code, _, err = run_cli("eval", chains_file, "-o", tmp_path / "parts", *common,
                               "--shard", f"{i}/2")
        assert code == 0, err
    one, parts = read_table(tmp_path / "one.parquet"), read_table(tmp_path / "parts")
    assert parts.to_pylist() == one.to_pylist()
