"""The README's promises: its two opening commands, and its Python example runs as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_main_job_and_the_test_command():
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert "pip install ." in commands[0] and "bpnet train configs/mnist_mlp.yaml" in commands[0]
    assert "pip install '.[test]'" in commands[1] and "python -m pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci and "'.[test]'" in ci


def test_python_api_example_runs(tmp_path, monkeypatch):
    block = re.search(r"## Python API.*?```python\n(.*?)```", README, re.S).group(1)
    for folder in ("configs", "data"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["report"].passed
    assert namespace["rows"][-1]["test_acc"] > 0.9
    assert (tmp_path / "runs" / "api" / "metrics.csv").is_file()
    assert namespace["probs"].shape == (100, 10)
    assert namespace["tuned_rows"][-1]["test_acc"] > 0.9
