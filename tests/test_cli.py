import subprocess
import sys

import pytest
from conftest import run_cli, summary_of

from cotprune.data.files import read_table


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys; from cotprune.cli import app; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "cotprune", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ["import", "synth", "score", "prune", "show", "distill", "eval", "rl"]:
        assert command in out


def test_config_file_fills_defaults_and_flags_win(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("n: 4\nseed: 9\n")
    out = tmp_path / "a.parquet"
    code, stdout, _ = run_cli("synth", "arithmetic", "-o", out, "--config", cfg)
    assert code == 0 and summary_of(stdout)["rows"] == 4
    code, stdout, _ = run_cli("synth", "arithmetic", "-o", out, "--config", cfg, "-n", "2")
    assert code == 0 and summary_of(stdout)["rows"] == 2
    from cotprune.data.synth import synth_arithmetic

    assert read_table(out).to_pylist() == synth_arithmetic(2, 9)


@pytest.mark.parametrize("text,needle", [("bogus: 1\n", "unknown option"), ("[1, 2]\n", "mapping")])
def test_bad_config_exits_2(tmp_path, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code, _, stderr = run_cli("synth", "arithmetic", "-o", tmp_path / "a.parquet",
                              "--config", cfg)
    assert code == 2 and needle in stderr and str(cfg) in stderr


def test_usage_errors_exit_2(tmp_path):
    assert run_cli("synth")[0] == 2
    assert run_cli("no-such-command")[0] == 2
    assert run_cli("show", tmp_path / "missing.parquet")[0] == 2


# --- the option vocabulary: one flag per concept, old spellings as hidden aliases -----------

@pytest.fixture
def logged():
    """The messages the `cotprune` logger emits during a test."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("cotprune")
    logger.addHandler(handler)
    yield lambda: [r.getMessage() for r in records]
    logger.removeHandler(handler)


@pytest.mark.parametrize("command, new, old", [
    (["eval", "bench.parquet"], "--keep", "--keep-ratio"),
    (["distill", "pruned.parquet"], "--keep", "--keep-ratio"),
    (["rl", "prompts.parquet"], "--samples", "--num-generations")])
def test_old_spellings_still_work_hidden_and_deprecated(tmp_path, logged, command, new, old):
    # A bad value through the old spelling is refused by the new flag's check: it got there.
    bad = {"--keep": "2", "--samples": "0"}[new]
    code, _, stderr = run_cli(*command, "-o", tmp_path / "out", old, bad)
    assert code == 2 and new in stderr and not (tmp_path / "out").exists()
    assert any(old in m and "deprecated" in m and new in m for m in logged())
    code, _, stderr = run_cli(*command, "-o", tmp_path / "out", old, bad, new, bad)
    assert code == 2 and f"give only {new}" in stderr
    cfg = tmp_path / "c.yaml"  # old option names in a config file work too
    cfg.write_text(f"{old.lstrip('-')}: {bad}\n")
    code, _, stderr = run_cli(*command, "-o", tmp_path / "out", "--config", cfg)
    assert code == 2 and new in stderr and "unknown option" not in stderr
    if command[0] == "eval":  # the command line wins over the file, whichever spelling
        code, _, stderr = run_cli(*command, "-o", tmp_path / "out", "--config", cfg, new, "0.5")
        assert code == 2 and "bench.parquet" in stderr and new not in stderr
    help_text = subprocess.run([sys.executable, "-m", "cotprune", command[0], "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert new in help_text and old not in help_text


def test_rl_significance_files_use_the_flags_score_and_prune_use(tmp_path, logged):
    missing = tmp_path / "no-such-dir"
    args = ["rl", "prompts.parquet", "-o", tmp_path / "out", "--reward", "bingo"]
    code, _, stderr = run_cli(*args, "--significance", "model", "--significance-model", missing)
    assert code == 2 and "--significance-model" in stderr and str(missing) in stderr
    code, _, stderr = run_cli(*args, "--significance", f"model:{missing}")  # the old spelling
    assert code == 2 and "--significance-model" in stderr and str(missing) in stderr
    assert any("deprecated" in m for m in logged())
    code, _, stderr = run_cli(*args, "--significance", "model")
    assert code == 2 and "needs --significance-model PATH" in stderr
    code, _, stderr = run_cli(*args, "--predictor", tmp_path / "p.st")
    assert code == 2 and "--predictor goes with --significance predictor" in stderr


def test_every_model_command_takes_the_same_model_options():
    """Declared once (`cli.options.model_options`): the same flags, defaults and help."""
    import typer.main

    from cotprune.cli import app

    commands = dict(typer.main.get_command(app).commands)
    commands.update({f"predictor {n}": c for n, c in commands.pop("predictor").commands.items()})
    seen = {}
    for name, command in commands.items():
        params = {p.name: p for p in command.params}
        if "dtype" not in params:
            assert name in ("import", "synth", "show", "report"), name
            continue
        for flag in ("model", "adapter", "dtype", "device", "trust_remote_code", "config"):
            p = params[flag]
            shape = (tuple(p.opts), p.default, p.help)
            if flag == "model" and name.startswith("predictor"):
                continue  # the pruner's model, read from the input by default
            seen.setdefault(flag, shape)
            assert shape == seen[flag], (name, flag)
    assert seen["model"][1] == "smollm2-135m"
