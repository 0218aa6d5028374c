"""Rewriting: rules, patterns, the registry and the fixpoint driver."""

from exprc.rewrite import rules  # noqa: F401  (registers the built-in rules)
from exprc.rewrite.core import REGISTRY, C, P, Rule, X, register_rule, rule, select
from exprc.rewrite.driver import TraceEntry, rewrite

__all__ = ["REGISTRY", "C", "P", "Rule", "TraceEntry", "X", "register_rule", "rewrite", "rule", "select"]
