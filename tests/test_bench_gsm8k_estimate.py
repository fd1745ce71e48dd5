"""bench/gsm8k_estimate.py: the length fit and the arithmetic of the GSM8K-train estimate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cotprune.pruning.greedy import published_tokens

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def est():
    spec = importlib.util.spec_from_file_location("bench_gsm8k_estimate",
                                                  BENCH / "gsm8k_estimate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_power_recovers_a_power_law(est):
    lengths = [60, 90, 150, 240]
    a, b = est.fit_power(lengths, [1.5 * n ** 0.8 for n in lengths])
    assert (a, b) == pytest.approx((1.5, 0.8), rel=1e-9)
    assert est.fit_power([100, 100], [5.0, 5.0]) == pytest.approx((5.0, 0.0))  # no spread


def test_mode_fits_use_each_modes_own_chains(est):
    recs = [{"mode": "m", "cot_tokens": n, "published_tokens": 10 * n * n, "tokens_run": n}
            for n in (50, 200)]
    recs.append({"mode": "other", "cot_tokens": 50, "published_tokens": 1, "tokens_run": 1})
    assert est.mode_fits(recs, ["m"])["m"] == pytest.approx((10.0, 1.0))
    with pytest.raises(SystemExit, match="'other': 1 chains"):
        est.mode_fits(recs, ["other"])


def test_estimate_divides_each_chains_published_tokens_by_its_fitted_ratio(est):
    chains = [(30, 64, 8), (30, 200, 8)]
    published = [published_tokens(p, n, a, n - n // 2) for p, n, a in chains]
    out = est.estimate(chains, {"m": (2.0, 1.0)}, 0.5, params=1e9, peak_tflops=100.0, mfu=0.5)
    assert out["published"]["tokens"] == sum(published)
    tokens = published[0] / 128 + published[1] / 400
    assert out["m"]["tokens"] == pytest.approx(tokens)
    assert out["m"]["flop"] == pytest.approx(2e9 * tokens)
    assert out["m"]["hours"] == pytest.approx(2e9 * tokens / 50e12 / 3600)
