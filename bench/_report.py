"""Shared printing and entry point for the ``python -m bench.<name>`` modules."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from typing import Any

Rows = list[dict[str, Any]]


def machine_line(extra: str = "") -> str:
    line = (f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, {platform.platform()}")
    return f"{line}, {extra}" if extra else line


def print_rows(rows: Rows, extra: str = "") -> None:
    """One line per result; floats with thousands separators."""
    print(machine_line(extra))
    for row in rows:
        parts = [row["name"]]
        for key, value in row.items():
            if key == "name":
                continue
            parts.append(f"{key}={value:,.2f}" if isinstance(value, float) else f"{key}={value}")
        print("  " + " | ".join(parts))


def main(run: Callable[..., Rows], doc: str | None, quick_help: str = "fewer iterations",
         extra: str = "") -> None:
    """Parse ``--quick`` and print ``run(quick=...)``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args()
    print_rows(run(quick=args.quick), extra)
