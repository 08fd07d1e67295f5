"""Moved to `realdata` (repository root), shared by the demos and the benchmarks; this shim goes once nothing imports it."""

from realdata import CACHE_DIR, prompt_completion_reward, tiny_lm, train_test_reviews, vader  # noqa: F401
