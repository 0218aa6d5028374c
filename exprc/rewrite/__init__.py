"""Rewriting: rules, patterns, the registry and the fixpoint driver."""

from exprc.rewrite.core import REGISTRY, C, P, Rule, X, register_rule, rule, select
from exprc.rewrite.driver import TraceEntry, rewrite
from exprc.rewrite import rules  # noqa: F401  (registers the built-in rules)

__all__ = ["REGISTRY", "C", "P", "Rule", "X", "TraceEntry", "register_rule", "rewrite", "rule", "select"]
