"""``python -m relay``: the same as the ``pigeon-relay`` console script."""

from .cli import main

raise SystemExit(main())
