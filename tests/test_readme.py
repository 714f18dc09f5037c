"""The README's Python examples run as written, and its SDK quickstart is the one that
docs/sdk.md §15.2 holds (which tests/e2e/test_sdk_quickstart.py runs against a relay)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SDK_DOC = ROOT / "docs" / "sdk.md"


def test_readme_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_quickstart_is_the_tested_one() -> None:
    doc = SDK_DOC.read_text(encoding="utf-8")
    section = doc[doc.index("### 15.2 Quickstart"):]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match is not None
    readme = README.read_text(encoding="utf-8")
    quickstart = readme[readme.index("## Quickstart: the SDK"):]
    block = re.search(r"```python\n(.*?)```", quickstart, flags=re.S)
    assert block is not None and block.group(1) == match.group(1)
