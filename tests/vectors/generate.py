"""Regenerate every file in docs/vectors/: ``python -m tests.vectors.generate``.

Each ``gen_*.py`` module beside this one exposes ``generate() -> dict[str, object]``
and ``FILENAME``; this script writes them all. Vector tests compare the code's
output against the committed files, so regenerate only on a deliberate change
of bytes (and bump the relevant version).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

VECTORS_DIR = Path(__file__).resolve().parents[2] / "docs" / "vectors"


def main() -> None:
    import tests.vectors as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("gen_"):
            continue
        mod = importlib.import_module(f"tests.vectors.{info.name}")
        data = mod.generate()
        path = VECTORS_DIR / mod.FILENAME
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(VECTORS_DIR.parents[1])}")


if __name__ == "__main__":
    main()
