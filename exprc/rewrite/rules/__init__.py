"""Rule families, one per module; importing this package registers them all."""

from exprc.rewrite.rules import algebra, fold  # noqa: F401
