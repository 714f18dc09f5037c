"""``pigeon-chat``: an end-to-end encrypted terminal chat on the Pigeon SDK.

Start a relay (``pigeon-relay``), then ``pigeon-chat --profile alice.pigeon`` in one
terminal and ``pigeon-chat --profile bob.pigeon`` in another; type ``/help``. Modules:
:mod:`.app` (options, passphrase, the prompt loop), :mod:`.syntax` (the commands and
how a line is parsed), :mod:`.commands` (what they do), :mod:`.events` (live updates
above the prompt), :mod:`.view` (formatting), :mod:`.transfers` (progress bars). It
needs the ``cli`` extra (prompt_toolkit, rich).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """The ``pigeon-chat`` console script."""
    try:
        from .app import main as run
    except ModuleNotFoundError as exc:
        if exc.name not in ("prompt_toolkit", "rich"):
            raise
        print(f"pigeon-chat needs {exc.name}: pip install 'pigeon-messenger[cli]' "
              "(./scripts/demo installs it into ./.venv)", file=sys.stderr)
        sys.exit(1)
    run(argv)
