"""`cotprune report`: the page parses, shows each input kind, needs no network; and its math."""

from __future__ import annotations

import base64
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import TOKENIZERS, run_cli, summary_of

from cotprune.data.files import write_table
from cotprune.report.plots import (
    colour_of,
    deletion_ranks,
    forking_tokens,
    normalise,
    pareto_front,
    sample_ids,
)

GPT2 = TOKENIZERS / "gpt2"
COTS = ["First add 3 and 4 to get 7. Then double it: 7 times 2 is 14.",
        "We start with 10 apples, eat 3, so 7 remain. Check: 10 - 3 = 7.",
        "Half of 8 is 4, plus 5 makes 9.",
        "Multiply 6 by 7, which gives 42, and that is the answer.",
        "Subtract 2 from 9 to get 7; then 7 plus 1 is 8."]
RATIOS = (0.7, 0.5)


# --- hand-made input files -----------------------------------------------------------------

class Page(HTMLParser):
    """Collects what the tests look at: tags with attributes, and all text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags
                if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def _layout_rows(tokenizer, n: int) -> list[dict]:
    from cotprune.data.layout import ChainLayout

    lay = ChainLayout(tokenizer)
    rows = []
    for k in range(n):
        cot = COTS[k % len(COTS)]
        q, a = f"Question number {k}?", str(k)
        rows.append({"id": f"chain-{k}", "question": q, "cot": cot, "answer": a,
                     "reference": a, **lay.layout(q, cot, a).as_columns()})
    return rows


def make_pruned(tokenizer, n: int = 5, *, cot_tokens: bool = False) -> pa.Table:
    """Greedy rows (one deletion trajectory serves both ratios) and surprisal rows."""
    rng = random.Random(1)
    out = []
    for base in _layout_rows(tokenizer, n):
        m = base["cot_end"] - base["cot_start"]
        order = list(range(m))
        rng.shuffle(order)
        order = order[: m - int(min(RATIOS) * m)]
        trace = [2.0 + 0.1 * s for s in range(len(order))]
        for method in ("greedy", "surprisal"):
            for r in RATIOS:
                k = int(r * m)
                if method == "greedy":
                    kept = sorted(set(range(m)) - set(order[: m - k]))
                else:
                    kept = list(range(k))
                row = {**base, "keep_ratio": r, "original_tokens": m, "kept_tokens": k,
                       "kept_positions": kept, "method": method,
                       "objective_nll": (3.0 if method == "greedy" else 4.0) + (1 - r),
                       "prune_order": order if method == "greedy" else None,
                       "objective_trace": trace if method == "greedy" else None}
                if cot_tokens:
                    ids = base["input_ids"][base["cot_start"]:base["cot_end"]]
                    row["cot_tokens"] = [f"<{i}>" for i in ids]
                out.append(row)
    ints = pa.list_(pa.int32())
    schema = [pa.field("keep_ratio", pa.float32()), pa.field("original_tokens", pa.int32()),
              pa.field("kept_tokens", pa.int32()), pa.field("kept_positions", ints),
              pa.field("objective_nll", pa.float32()), pa.field("prune_order", ints),
              pa.field("objective_trace", pa.list_(pa.float32())), pa.field("input_ids", ints)]
    table = pa.Table.from_pylist(out)
    for f in schema:
        table = table.set_column(table.schema.get_field_index(f.name), f,
                                 table[f.name].cast(f.type))
    return table


def make_scores(tokenizer, n: int = 5) -> pa.Table:
    from cotprune.data.layout import token_texts

    rng = np.random.default_rng(0)
    rows = []
    for base in _layout_rows(tokenizer, n):
        ids = base["input_ids"][base["cot_start"]:base["cot_end"]]
        rows.append({**base, "cot_tokens": token_texts(tokenizer, ids),
                     "surprisal": rng.gamma(2.0, 1.5, len(ids)).tolist(),
                     "entropy": rng.gamma(1.5, 1.0, len(ids)).tolist()})
    table = pa.Table.from_pylist(rows)
    for c in ("surprisal", "entropy"):
        table = table.set_column(table.schema.get_field_index(c), c,
                                 table[c].cast(pa.list_(pa.float32())))
    return table


def make_eval(accuracy: float, tokens: float, n: int = 20) -> pa.Table:
    k = round(accuracy * n)
    return pa.table({"id": [f"q{i}" for i in range(n)],
                     "prediction": [str(i) for i in range(n)],
                     "correct": [i < k for i in range(n)],
                     "generated_tokens": pa.array([int(tokens)] * n, pa.int32()),
                     "truncated": [False] * n})


@pytest.fixture
def files(tmp_path, gpt2_tokenizer) -> dict[str, Path]:
    manifest = {"command": "prune", "model": str(GPT2)}
    paths = {"pruned": tmp_path / "pruned.parquet", "scores": tmp_path / "scores.parquet"}
    write_table(make_pruned(gpt2_tokenizer), paths["pruned"], manifest)
    write_table(make_scores(gpt2_tokenizer), paths["scores"], {**manifest, "command": "score"})
    for name, acc, toks, keep in (("e1", 0.60, 120, 1.0), ("e2", 0.55, 60, 0.5),
                                  ("e3", 0.40, 90, 0.7)):
        paths[name] = tmp_path / f"{name}.parquet"
        write_table(make_eval(acc, toks), paths[name],
                    {"command": "eval", "model": "tiny-student", "adapter": f"out/{name}",
                     "keep_ratio": keep})
    return paths


def report(*args) -> tuple[int, str, str]:
    return run_cli("report", *args)


# --- the page -------------------------------------------------------------------------------

def test_report_all_kinds_self_contained(files, tmp_path, gpt2_tokenizer):
    out = tmp_path / "rep"
    code, stdout, stderr = report(*files.values(), "-o", out)
    assert code == 0, stderr
    summary = summary_of(stdout)
    assert summary["output"] == str(out / "index.html")
    assert (summary["pruned"], summary["eval"], summary["scores"]) == (1, 3, 1)
    text = (out / "index.html").read_text()
    page = Page(text)

    # chains, tables, images
    assert [c["data-id"] for c in page.all("div", **{"class": "chain"})] == \
        [f"chain-{k}" for k in range(5)]
    for table_id in ("inputs", "objective-table", "eval-table"):
        assert page.all("table", id=table_id), table_id
    assert page.all("table", **{"class": "summary forking"})
    imgs = [a["src"] for a in page.all("img")]
    assert len(imgs) == 4  # J per method, greedy trace, Pareto, score histograms
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(out.glob("*.png"))) == 4

    # no network: no URL anywhere, every src/href is inline
    assert not re.search(r"https?://", text)
    for _, attrs in page.tags:
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith(("data:", "#")), attrs[key]
    assert not page.all("link")

    # tokens decoded with the manifest's tokenizer; J summary = mean of hand-made values
    joined = "".join(page.text)
    assert " apples" in joined and "could not be loaded" not in joined
    assert "3.500" in joined and "4.500" in joined  # greedy / surprisal at ratio 0.5
    # Pareto: e2 (60 tokens, 0.55) and e1 (120, 0.60) are on the front, e3 is dominated by e2
    rows = re.findall(r'<tr class="(front)?"><td>([^<]*)</td>', text)
    assert {label for cls, label in rows if cls} == {"tiny-student +e1 @1.0",
                                                    "tiny-student +e2 @0.5"}


def test_struck_through_tokens_match_kept_positions(files, tmp_path, gpt2_tokenizer):
    out = tmp_path / "rep"
    code, _, stderr = report(files["pruned"], "-o", out, "--keep", "0.7")
    assert code == 0, stderr
    text = (out / "index.html").read_text()
    table = make_pruned(gpt2_tokenizer)
    chain = text.split('data-id="chain-2"')[1].split('class="chain"')[0]
    runs = chain.split('class="run"')[1:]
    assert len(runs) == 2 and "<b>greedy</b>" in runs[0] and "<b>surprisal</b>" in runs[1]
    for run, method in zip(runs, ("greedy", "surprisal"), strict=True):
        row = [r for r in table.to_pylist() if r["id"] == "chain-2" and r["method"] == method
               and abs(r["keep_ratio"] - 0.7) < 1e-6][0]
        n = row["original_tokens"]
        assert run.count('<s class="t"') == n - len(row["kept_positions"])
        assert run.count('<span class="t"') == len(row["kept_positions"])
        struck = [int(m) for m in re.findall(r'<s class="t"[^>]*title="#(\d+) ', run)]
        assert struck == sorted(set(range(n)) - set(row["kept_positions"]))
    # colours follow greedy's deletion step: the first deleted token gets the palest colour
    order = [r for r in table.to_pylist() if r["id"] == "chain-2"][0]["prune_order"]
    assert f'background:{colour_of(0.0)}" title="#{order[0]} deleted at greedy step 1' in runs[0]
    assert f'title="#{order[-1]} deleted at greedy step {len(order)}' in runs[1]


def test_sampling_is_announced_and_seeded(files, tmp_path):
    seen = []
    for name in ("a", "b"):
        out = tmp_path / name
        code, _, stderr = report(files["pruned"], "-o", out, "--max-chains", "2", "--seed", "3")
        assert code == 0, stderr
        text = (out / "index.html").read_text()
        seen.append(re.findall(r'class="chain" data-id="([^"]+)"', text))
        assert "random sample of 2 of 5 chains" in text
    assert seen[0] == seen[1] and len(seen[0]) == 2


def test_color_by_score_and_part_directory(files, tmp_path, gpt2_tokenizer):
    parts = tmp_path / "pruned-parts"
    parts.mkdir()
    table = make_pruned(gpt2_tokenizer)
    write_table(table.slice(0, 8), parts / "part-00000-of-00002.parquet", {"model": str(GPT2)})
    write_table(table.slice(8), parts / "part-00001-of-00002.parquet", {"model": str(GPT2)})
    out = tmp_path / "rep"
    code, _, stderr = report(parts, files["scores"], "-o", out, "--color-by", "surprisal")
    assert code == 0, stderr
    text = (out / "index.html").read_text()
    assert len(re.findall(r'class="chain" data-id=', text)) == 5
    assert "surprisal = " in text and "its surprisal score" in text


def test_cot_tokens_column_and_tokenizer_fallback(tmp_path, gpt2_tokenizer):
    with_tokens = tmp_path / "with-tokens.parquet"
    write_table(make_pruned(gpt2_tokenizer, 2, cot_tokens=True), with_tokens,
                {"model": "/nonexistent/tokenizer"})
    code, _, stderr = report(with_tokens, "-o", tmp_path / "a")
    assert code == 0, stderr
    text = (tmp_path / "a" / "index.html").read_text()
    assert "&lt;" in text and "could not be loaded" not in text  # cot_tokens used as they are

    no_tok = tmp_path / "no-tok.parquet"
    write_table(make_pruned(gpt2_tokenizer, 2), no_tok, {"model": str(tmp_path / "missing")})
    code, _, stderr = report(no_tok, "-o", tmp_path / "b")
    assert code == 0, stderr
    text = (tmp_path / "b" / "index.html").read_text()
    assert "could not be loaded" in text and re.search(r'class="t"[^>]*>\[\d+\]<', text)
    code, _, stderr = report(no_tok, "-o", tmp_path / "c", "--tokenizer", str(GPT2))
    assert code == 0, stderr
    assert " apples" in (tmp_path / "c" / "index.html").read_text()


def test_labels_name_eval_runs(files, tmp_path):
    out = tmp_path / "rep"
    code, _, stderr = report(files["e1"], files["e2"], "-o", out, "--label", "base",
                             "--label", "pruned-0.5")
    assert code == 0, stderr
    text = (out / "index.html").read_text()
    assert "<td>base</td>" in text and "<td>pruned-0.5</td>" in text


@pytest.mark.parametrize("case", ["unknown-kind", "missing-file", "bad-keep", "bad-label",
                                  "bad-color", "misaligned-score"])
def test_bad_input_exits_2_and_writes_nothing(case, files, tmp_path, chains_file):
    out = tmp_path / "nested" / "rep"
    args = {
        "unknown-kind": [chains_file],
        "missing-file": [files["pruned"], tmp_path / "nope.parquet"],
        "bad-keep": [files["pruned"], "--keep", "0.33"],
        "bad-label": [files["e1"], files["e2"], "--label", "only-one"],
        "bad-color": [files["pruned"], files["scores"], "--color-by", "attention"],
        "misaligned-score": [tmp_path / "bad-scores.parquet"],
    }[case]
    if case == "misaligned-score":
        t = pa.table({"id": ["x", "y"], "cot_tokens": [["a", "b"], ["c"]],
                      "entropy": pa.array([[1.0, 2.0], [1.0, 2.0]], pa.list_(pa.float32()))})
        write_table(t, args[0])
    code, _, stderr = report(*args, "-o", out)
    assert code == 2, stderr
    assert "error" in stderr
    assert not out.exists() and not (tmp_path / "nested").exists()
    if case == "unknown-kind":
        assert "cannot tell what kind" in stderr and str(chains_file) in stderr
    if case == "misaligned-score":
        assert "row y" in stderr and "entropy" in stderr


def test_existing_report_is_replaced_but_other_directories_are_refused(files, tmp_path):
    out = tmp_path / "rep"
    assert report(files["e1"], "-o", out)[0] == 0
    assert report(files["e2"], "-o", out)[0] == 0
    assert "e2.parquet" in (out / "index.html").read_text()
    other = tmp_path / "data"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    assert report(files["e1"], "-o", other)[0] == 2
    assert sorted(p.name for p in other.iterdir()) == ["precious.txt"]


# --- the math -------------------------------------------------------------------------------

def test_pareto_front_on_hand_made_points():
    tokens = [100, 50, 50, 200, 150, 200, 150]
    accuracy = [0.5, 0.5, 0.4, 0.9, 0.8, 0.7, 0.8]
    # (50,.5) beats (100,.5) and (50,.4); (150,.8) beats (200,.7); duplicates both stay
    assert pareto_front(tokens, accuracy) == [False, True, False, True, True, False, True]
    assert pareto_front([], []) == []
    assert pareto_front([10], [0.0]) == [True]


def test_pareto_front_matches_sorting_reference():
    """Against a plain reference: sort by tokens, keep points that raise the best accuracy."""
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.randint(1, 20), rng.randint(0, 10) / 10) for _ in range(rng.randint(1, 12))]
        best, ref = -1.0, set()
        for t in sorted({p[0] for p in pts}):
            a = max(p[1] for p in pts if p[0] == t)
            if a > best:
                ref.add((t, a))
                best = a
        got = pareto_front([p[0] for p in pts], [p[1] for p in pts])
        assert {p for p, f in zip(pts, got, strict=True) if f} == ref


def test_forking_tokens_counts_top_entropy_tokens():
    tokens = ["a", "b", "a", "c", "a", "b", "d", "e", "f", "g"]
    entropy = np.array([5.0, 4.0, 6.0, 0.1, 0.2, 0.3, 0.1, 0.2, 0.1, 0.0])
    threshold, rows = forking_tokens(tokens, entropy, rho=0.3)
    assert threshold == pytest.approx(np.quantile(entropy, 0.7))
    assert rows == [("a", 2, 3, 5.5), ("b", 1, 2, 4.0)]


def test_token_colour_helpers():
    assert deletion_ranks([2, 0], 4) == [1, 2, 0, 2]
    assert colour_of(0.0) == "#dbe9f6" and colour_of(1.0) == "#f28e5c"
    assert colour_of(2.0) == colour_of(1.0) and colour_of(float("nan")) == colour_of(0.0)
    assert normalise([1.0, 3.0, 2.0]) == [0.0, 1.0, 0.5]
    assert normalise([2.0, 2.0]) == [0.5, 0.5]
    ids = [str(i) for i in range(100)]
    assert sample_ids(ids, 200, 0) == ids
    s = sample_ids(ids, 10, 7)
    assert len(s) == 10 and s == sorted(s, key=int) and s == sample_ids(ids, 10, 7)


def test_show_decodes_with_tokenizer_when_the_manifest_model_is_gone(tmp_path, gpt2_tokenizer):
    """`show --tokenizer` means what `report --tokenizer` means: decode with this tokenizer."""
    pruned = tmp_path / "pruned.parquet"
    write_table(make_pruned(gpt2_tokenizer), pruned, {"command": "prune",
                                                      "model": str(tmp_path / "gone")})
    code, _, stderr = run_cli("show", pruned, "--limit", "1")
    assert code == 2 and "gone" in stderr
    code, stdout, stderr = run_cli("show", pruned, "--limit", "1", "--tokenizer", GPT2)
    assert code == 0, stderr
    assert "Q:" in stdout
