"""Rewriting: rules, patterns, the registry and the fixpoint driver.

A rule is added with :func:`rewrite_rule` (also ``exprc.rewrite_rule``); ``rule`` is its former
name and :func:`register_rule` the registry insert underneath."""

from exprc.rewrite import core as _core
from exprc.rewrite.core import C, P, Rule, X, register_rule, rewrite_rule, rule, select
from exprc.rewrite.driver import TraceEntry, rewrite

__all__ = ["REGISTRY", "C", "P", "Rule", "TraceEntry", "X", "register_rule", "rewrite", "rewrite_rule", "rule",
           "select"]


def __getattr__(name: str) -> object:
    # The registry with the built-in rules in it: they load on first use (rewrite.core.load_rules).
    if name == "REGISTRY":
        _core.load_rules()
        return _core.REGISTRY
    raise AttributeError(f"module 'exprc.rewrite' has no attribute {name!r}")
