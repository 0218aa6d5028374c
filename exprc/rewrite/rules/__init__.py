"""Rule families, one per module; importing this package registers them all (in this order:
at a node, the first rule of the list that matches fires)."""

from exprc.rewrite.rules import algebra, canonicalize, fold, indexing, stability  # noqa: F401
