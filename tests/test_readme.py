"""README works as written (issue 25, item 2): every ``.. code-block:: python`` of README.rst
runs, each in a fresh interpreter against the embedded local Lambda, and prints what its
comments promise."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BLOCK = re.compile(r"^\.\. code-block:: python\n\n((?:    .*\n|\n)+)", re.MULTILINE)


def readme_blocks() -> list[str]:
    return [textwrap.dedent(b) for b in BLOCK.findall((ROOT / "README.rst").read_text())]


def promised(block: str) -> list[str]:
    """What the block's ``print(...)  # value`` comments say it prints."""
    return re.findall(r"#\s*(\[[^\]]*\]|\{[^}]*\}|\d[\d.]*)", block)


def test_the_readme_has_its_examples():
    assert len(readme_blocks()) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_a_readme_block_runs_as_written(index, tmp_path):
    block = readme_blocks()[index]
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for value in promised(block):
        assert value in done.stdout, (value, done.stdout)
