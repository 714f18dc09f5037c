"""``python -m examples.chat``: the same as ``pigeon-chat``."""

from . import main

main()
