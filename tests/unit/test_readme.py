"""The README's promises: its Python example runs, its set-up commands are what CI runs."""

import re

from helpers import REPO

README = (REPO / "README.md").read_text()


def test_readme_python_example_runs(capsys):
    block = re.search(r"```python\n(import jax\n.*?)```", README, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()


def test_ci_runs_the_readme_test_command():
    setup = re.search(r"## Set-up.*?```bash\n(.*?)```", README, re.S).group(1)
    test_command = setup.strip().splitlines()[1].split("&&")[1].split("#")[0].strip()
    assert test_command == "python -m pytest"
    assert test_command in (REPO / ".ci" / "run").read_text()
