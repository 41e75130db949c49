"""docs/python.md's walk-through runs as written: its python blocks in order, in one namespace,
in a scratch folder that sees the repository's assets."""

import os
import re

from conftest import REPO


def test_walk_through_runs(tmp_path, capsys):
    text = (REPO / "docs" / "python.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    os.symlink(REPO / "assets", tmp_path / "assets")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace = {}
        for block in blocks:
            exec(compile(block, "docs/python.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "mnist.int8.onnx").exists() and (tmp_path / "mnist.qdq.onnx").exists()
    assert namespace["e"].top1[1] > 0.95
