"""The README's Python quick start runs as written."""

import re

from eaq.paths import repo_root


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    text = (repo_root() / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert (tmp_path / "q" / "my-resnet18" / "artifact.json").is_file()
    assert (tmp_path / "my-resnet18.onnx").is_file()


def test_readme_is_a_guide_not_a_diary():
    lines = (repo_root() / "README.md").read_text().splitlines()
    assert len(lines) <= 175
    assert all(len(line) <= 100 for line in lines)
