"""Run the Python examples of the docs, so that they cannot rot.

Every ```python block of each `docs/*.md` page runs, in order, in one namespace per page, in a temporary working
directory. The stand-in paths `path/to/causal-lm` and `path/to/reward-model` are replaced by saved tiny models (a GPT-2
causal LM, and a one-label sequence classifier, each with the test tokenizer). Blocks that must not run are written
as ```bash or ```text.
"""

import os
import re
from pathlib import Path

import pytest


DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(path.name for path in DOCS.glob("*.md"))
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text):
    """The ```python blocks of a Markdown page, with the line number of each block's first line."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in BLOCK.finditer(text)]


def test_block_extraction():
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a + 1\nprint(b)\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (9, "b = a + 1\nprint(b)\n")]


@pytest.mark.parametrize("page", PAGES)
def test_docs_page_runs(page, tiny_causal_lm_path, tiny_reward_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    monkeypatch.chdir(tmp_path)
    text = (DOCS / page).read_text()
    blocks = python_blocks(text)
    if not blocks:
        pytest.skip(f"{page} has no python block")
    namespace = {"__name__": f"docs_{Path(page).stem}"}
    for line, code in blocks:
        code = code.replace("path/to/causal-lm", tiny_causal_lm_path)
        code = code.replace("path/to/reward-model", tiny_reward_model_path)
        exec(compile(code, f"docs/{page}, block at line {line}", "exec"), namespace)  # noqa: S102 (our own docs)
    assert os.getcwd() == str(tmp_path)
