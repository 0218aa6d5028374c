"""``python -m exprc`` is the ``exprc`` command."""

from exprc.cli import main

raise SystemExit(main())
