"""``python -m ztproxy``: the same as the ``ztproxy`` command."""

from ztproxy.cli import main

raise SystemExit(main())
