"""Rewriting: rules, patterns, the registry and the fixpoint driver.

A rule is added with :func:`rewrite_rule` (also ``exprc.rewrite_rule``); ``rule`` is its former
name and :func:`register_rule` the registry insert underneath."""

from exprc.rewrite import rules  # noqa: F401  (registers the built-in rules)
from exprc.rewrite.core import REGISTRY, C, P, Rule, X, register_rule, rewrite_rule, rule, select
from exprc.rewrite.driver import TraceEntry, rewrite

__all__ = ["REGISTRY", "C", "P", "Rule", "TraceEntry", "X", "register_rule", "rewrite", "rewrite_rule", "rule",
           "select"]
