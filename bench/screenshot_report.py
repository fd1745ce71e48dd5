"""Open a `cotprune report` page in headless Chromium and save a screenshot, to look at it.

    .venv/bin/python bench/screenshot_report.py                       # sample inputs, built here
    .venv/bin/python bench/screenshot_report.py IN... [--out DIR] [--keep R] [--height PX]

Without inputs it builds small hand-made pruned / eval / score files (GPT-2 tokenizer from
../shared; the numbers are made up, the page layout is what is being checked), runs
`cotprune report` on them, and screenshots DIR/index.html to DIR/screenshot.png. Chromium runs
with networking switched off as far as its flags allow and a fresh profile, so a page that
needed the network would show broken images. Needs Debian's `chromium` (apt-get install -y
chromium); without it the script says so and exits 0 (nothing to check here).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 2000) -> None:
    """Render `page` headless into `png` (a fresh, throwaway browser profile each time)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size={width},{height}", page.resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.exists():
        raise SystemExit(f"chromium failed ({done.returncode}):\n{done.stderr[-2000:]}")


def check_filter(page: Path) -> tuple[int, int]:
    """Run the page's chain filter in Chromium: type the first chain's id, count what shows.

    Returns (chains shown, chains in total) after filtering, read from the dumped DOM.
    """
    import re

    text = page.read_text(encoding="utf-8")
    ids = re.findall(r'class="chain" data-id="([^"]+)"', text)
    if not ids:
        return 0, 0
    probe = page.with_name("filter-probe.html")
    script = ("<script>var b=document.getElementById('filter');b.value=" + repr(ids[0]) +
              ";b.dispatchEvent(new Event('input'));</script></body>")
    probe.write_text(text.replace("</body>", script), encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                                   probe.resolve().as_uri()],
                                  capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink(missing_ok=True)
    hidden = len(re.findall(r'class="chain" data-id="[^"]+" style="display: none;"', done.stdout))
    return len(ids) - hidden, len(ids)


def sample_inputs(where: Path) -> list[Path]:
    """Hand-made pruned (greedy + surprisal), score and eval files, like tests/test_report.py."""
    import numpy as np
    import pyarrow as pa
    from transformers import AutoTokenizer

    from cotprune.data.files import write_table
    from cotprune.data.layout import ChainLayout, token_texts
    from cotprune.data.synth import synth_arithmetic

    tok_dir = ROOT.parent / "shared" / "data" / "tokenizers" / "gpt2"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    lay, rng, nrng = ChainLayout(tok), random.Random(0), np.random.default_rng(0)
    pruned, scores = [], []
    for c in synth_arithmetic(8, seed=2):
        base = {**c, **lay.layout(c["question"], c["cot"], c["answer"]).as_columns()}
        ids = base["input_ids"][base["cot_start"]:base["cot_end"]]
        m = len(ids)
        order = rng.sample(range(m), m - int(0.3 * m))
        trace = list(np.cumsum(nrng.gamma(0.3, 0.1, len(order))) + 2.0)
        for method in ("greedy", "surprisal"):
            for r in (0.9, 0.7, 0.5, 0.3):
                k = int(r * m)
                kept = (sorted(set(range(m)) - set(order[: m - k])) if method == "greedy"
                        else sorted(rng.sample(range(m), k)))
                pruned.append({**base, "keep_ratio": r, "original_tokens": m, "kept_tokens": k,
                               "kept_positions": kept, "method": method,
                               "objective_nll": (2.0 if method == "greedy" else 2.6) + 3 * (1 - r),
                               "prune_order": order if method == "greedy" else None,
                               "objective_trace": trace if method == "greedy" else None})
        scores.append({**base, "cot_tokens": token_texts(tok, ids),
                       "surprisal": nrng.gamma(2.0, 1.5, m).tolist(),
                       "entropy": nrng.gamma(1.5, 1.0, m).tolist()})
    manifest = {"command": "sample", "model": str(tok_dir)}
    paths = [where / "pruned.parquet", where / "scores.parquet"]
    write_table(pa.Table.from_pylist(pruned), paths[0], manifest)
    write_table(pa.Table.from_pylist(scores), paths[1], manifest)
    for name, acc, toks, keep in (("base", 0.62, 180, 1.0), ("greedy-0.7", 0.60, 120, 0.7),
                                  ("greedy-0.5", 0.52, 85, 0.5), ("surprisal-0.5", 0.41, 95, 0.5),
                                  ("greedy-0.3", 0.30, 60, 0.3)):
        n, hit = 50, round(acc * 50)
        path = where / f"eval-{name}.parquet"
        write_table(pa.table({"id": [f"q{i}" for i in range(n)], "prediction": ["0"] * n,
                              "correct": [i < hit for i in range(n)],
                              "generated_tokens": pa.array([toks] * n, pa.int32()),
                              "truncated": [False] * n}),
                    path, {"command": "eval", "model": "student", "adapter": f"out/{name}",
                           "keep_ratio": keep, "method": name.split("-")[0]})
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "report-screenshot")
    ap.add_argument("--keep", default=None)
    ap.add_argument("--height", type=int, default=2000)
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"skipped: no Chromium at {CHROMIUM} (apt-get install -y chromium)")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = args.inputs or sample_inputs(args.out)
    report_dir = args.out / "report"
    cmd = [sys.executable, "-m", "cotprune", "report", *map(str, inputs), "-o", str(report_dir)]
    if args.keep:
        cmd += ["--keep", args.keep]
    subprocess.run(cmd, check=True)
    png = args.out / "screenshot.png"
    screenshot(report_dir / "index.html", png, height=args.height)
    print(f"screenshot: {png}")
    shown, total = check_filter(report_dir / "index.html")
    if total:
        print(f"filter check: typing the first chain's id leaves {shown} of {total} chains shown")
        if shown != 1 and total > 1:
            raise SystemExit("filter check failed: expected exactly one chain to stay visible")


if __name__ == "__main__":
    main()
