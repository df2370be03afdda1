"""The README's Python example runs as written."""

import re
from pathlib import Path

from engine.runtime import actor_threads


def test_the_readme_engine_example_runs():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    code = re.search(r"<!-- example: engine-api -->\n```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert actor_threads() == []
