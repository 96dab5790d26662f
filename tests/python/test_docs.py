"""docs/PYTHON.md stays runnable: each code block after a `<!-- runnable: NAME -->`
line runs as a script in its own interpreter and must exit 0."""
import os
import re
import subprocess
import sys

import pytest

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "PYTHON.md")
BLOCK = re.compile(r"<!-- runnable: (\w+) -->\n```python\n(.*?)```", re.S)


def runnable_blocks():
    with open(DOC, encoding="utf-8") as f:
        return BLOCK.findall(f.read())


def test_the_doc_has_runnable_blocks():
    assert {name for name, _ in runnable_blocks()} >= {"quickstart", "cache_rows", "errors", "hixl_engine"}


@pytest.mark.parametrize("name,code", runnable_blocks(), ids=[name for name, _ in runnable_blocks()])
def test_runnable_block(name, code, tmp_path):
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
