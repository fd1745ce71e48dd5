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
