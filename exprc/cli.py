"""The ``exprc`` command line (also ``python -m exprc``).

``exprc cache path|list|show|stats|verify|prune|clear|unlock`` inspects and maintains the
compile cache of :mod:`exprc.cache` (the folder of the current exprc version; set
``EXPRC_CACHE_DIR`` to use another).  Exit status: 0 success, 1 problems found or
refused, 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from exprc._version import __version__

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """``500M``, ``1.5G``, ``10k``, ``2048`` (binary units; a trailing ``B``/``iB`` is accepted)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 500M, 2G, 100k)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` in seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 30d, 12h, 90m, 2w)")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for limit, div, unit in ((60, 1, "s"), (3600, 60, "min"), (86400, 3600, "h"), (float("inf"), 86400, "d")):
        if seconds < limit:
            return f"{seconds / div:.0f} {unit}"
    return "?"


# -- cache commands ------------------------------------------------------------------------------------------------
def _root() -> Path:
    from exprc import cache
    from exprc.config import current

    return cache.root(current())


def _load_entries(r: Path, deep: bool = False) -> list:
    from exprc import cache

    cache.check_safe(r)
    return cache.entries(r, deep=deep)


def _empty(r: Path, entries: list) -> bool:
    if not r.exists():
        print(f"The exprc cache is empty: {r} does not exist yet.")
        return True
    if not entries:
        print(f"The exprc cache at {r} is empty.")
        return True
    return False


def _row(e: Any, now: float) -> dict[str, Any]:
    m = e.meta or {}
    return {"key": e.key, "backend": m.get("backend", ""), "size_bytes": e.size, "created": m.get("created"),
            "last_used": m.get("last_used", e.last_used), "hits": m.get("hits"),
            "compile_seconds": m.get("compile_seconds"), "summary": m.get("summary", ""),
            "path": str(e.path), "problem": e.problem}


def cmd_path(args: argparse.Namespace) -> int:
    print(_root())
    return 0


_SORTS = {"key": (lambda r: r["key"], False), "size": (lambda r: r["size_bytes"], True),
          "age": (lambda r: r["created"] or 0, False), "used": (lambda r: r["last_used"] or 0, True),
          "hits": (lambda r: r["hits"] or 0, True)}


def cmd_list(args: argparse.Namespace) -> int:
    r = _root()
    es = _load_entries(r)
    now = time.time()
    key, desc = _SORTS[args.sort]
    rows = sorted((_row(e, now) for e in es), key=key, reverse=desc != args.reverse)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if _empty(r, es):
        return 0
    head = ("KEY", "BACKEND", "SIZE", "AGE", "LAST USED", "HITS", "COMPILE", "SUMMARY")
    table = [head]
    for row in rows:
        if row["problem"]:
            table.append((row["key"], "?", human_size(row["size_bytes"]), "?", "?", "?", "?",
                          f"<broken: {row['problem']}; run `exprc cache verify --fix`>"))
            continue
        table.append((row["key"], row["backend"] or "?", human_size(row["size_bytes"]),
                      human_age(now - row["created"]), human_age(now - row["last_used"]) + " ago", str(row["hits"]),
                      f"{row['compile_seconds']:.2f} s" if row["compile_seconds"] is not None else "?",
                      row["summary"]))
    widths = [max(len(t[i]) for t in table) for i in range(len(head) - 1)]
    width = shutil.get_terminal_size((120, 24)).columns
    for t in table:
        line = "  ".join(c.ljust(w) if i != 5 else c.rjust(w) for i, (c, w) in enumerate(zip(t, widths)))
        summary = t[-1]
        room = max(20, width - len(line) - 2)
        print(f"{line}  {summary if len(summary) <= room else summary[:room - 1] + '…'}".rstrip())
    total = sum(row["size_bytes"] for row in rows)
    print(f"{len(rows)} entries, {human_size(total)} in {r}")
    return 0


def _find(r: Path, prefix: str) -> Any:
    es = _load_entries(r)
    exact = [e for e in es if e.key == prefix]
    matches = exact or [e for e in es if e.key.startswith(prefix)]
    if not matches:
        print(f"exprc cache: no entry matches {prefix!r} in {r} (see `exprc cache list`)", file=sys.stderr)
        return None
    if len(matches) > 1:
        names = ", ".join(e.key for e in matches[:10]) + (", …" if len(matches) > 10 else "")
        print(f"exprc cache: {prefix!r} is ambiguous: it matches {len(matches)} entries ({names}); give more of "
              "the key", file=sys.stderr)
        return None
    return matches[0]


def _when(t: float, now: float) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))} ({human_age(now - t)} ago)"


def cmd_show(args: argparse.Namespace) -> int:
    from exprc import cache

    r = _root()
    e = _find(r, args.key)
    if e is None:
        return 1
    meta, problem = cache.check_entry(e.path, deep=True)
    now = time.time()
    fields = [("key", e.key), ("path", str(e.path))]
    if meta is None:
        for k, v in [*fields, ("problem", f"{problem} (run `exprc cache verify --fix`)")]:
            print(f"{k + ':':14}{v}")
        return 1
    fields += [
        ("backend", meta.get("backend", "")),
        ("summary", meta.get("summary", "")),
        ("size", f"{human_size(meta['size_bytes'])} ({meta['size_bytes']} bytes)"),
        ("created", _when(meta["created"], now)),
        ("last used", _when(meta["last_used"], now)),
        ("hits", meta["hits"]),
        ("compile time", f"{meta.get('compile_seconds', '?')} s"),
        ("exprc", meta.get("exprc_version", "?")),
        ("library", f"{meta['library']} (sha256 {meta['sha256']}, verified)"),
        *[(f"part {k}", v) for k, v in sorted(meta.get("parts", {}).items())],
    ]
    src = e.path / str(meta.get("source", ""))
    source = None
    if meta.get("source") and src.is_file():
        source = cache.read_file(src, int(meta["size_bytes"]), "source").decode(errors="replace")
    if args.html:
        from exprc.report import entry_page

        sys.stdout.write(entry_page(fields, source))
        return 0
    for k, v in fields:
        print(f"{k + ':':14}{v}" if not k.startswith("part ") else f"{k}: {v}")
    if source is not None:
        print(f"--- source: {src.name} ---")
        print(source, end="")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from exprc import cache
    from exprc.config import current

    r = _root()
    es = _load_entries(r)
    if _empty(r, es):
        return 0
    now = time.time()
    good = [e for e in es if e.meta is not None]
    print(f"path:           {r}")
    print(f"entries:        {len(es)}" + (f" ({len(es) - len(good)} broken)" if len(good) < len(es) else ""))
    print(f"total size:     {human_size(sum(e.size for e in es))} (limit {human_size(current().cache_max_bytes)})")
    print(f"hits:           {sum(int(e.meta['hits']) for e in good)}")
    print(f"compile time:   {sum(float(e.meta.get('compile_seconds') or 0) for e in good):.2f} s in total")
    if good:
        old = min(good, key=lambda e: e.meta["created"])
        new = max(good, key=lambda e: e.meta["created"])
        print(f"oldest:         {old.key} ({human_age(now - old.meta['created'])} old)")
        print(f"newest:         {new.key} ({human_age(now - new.meta['created'])} old)")
    left = cache.leftovers(r)
    if left:
        print(f"leftovers:      {len(left)} temporary folder(s) from interrupted builds (`exprc cache prune`)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from exprc import cache

    r = _root()
    es = _load_entries(r, deep=True)
    if not r.exists():
        print(f"The exprc cache is empty: {r} does not exist yet; nothing to verify.")
        return 0
    # The dispatcher extension lives in dispatch/ and is checked like the kernels' entries (sha256, owner).
    disp = cache.entries(r / "dispatch", deep=True) if (r / "dispatch").is_dir() else []
    left = cache.leftovers(r) + (cache.leftovers(r / "dispatch") if (r / "dispatch").is_dir() else [])
    folders = cache.check_folders(r)
    labelled = [(e.key, e) for e in es] + [(f"dispatch/{e.key}", e) for e in disp]
    bad = [(label, e) for label, e in labelled if e.problem]
    unfixed = 0
    for folder, problem in folders:
        print(f"BAD {folder}: {problem}" + (" (--fix does not change permissions)" if args.fix else ""))
        unfixed += 1
    for label, e in bad:
        if args.fix:
            errors: list[str] = []
            if cache.evict(e.path, errors) or not e.path.exists():
                print(f"evicted {label}: {e.problem}")
            else:
                print(f"could not evict {label}: {'; '.join(errors) or 'unknown error'}")
                unfixed += 1
        else:
            print(f"BAD {label}: {e.problem}")
    for p in left:
        if args.fix:
            shutil.rmtree(p, ignore_errors=True)
            if p.exists():
                print(f"could not remove leftover {p.name}")
                unfixed += 1
            else:
                print(f"removed leftover {p.name}")
        else:
            print(f"leftover {p.name} (from an interrupted build or deletion)")
    problems = len(bad) + len(left) + len(folders)
    what = f"{len(es)} entries" + (" and the dispatcher" if len(disp) == 1 else
                                   f" and {len(disp)} dispatcher builds" if disp else "")
    if not problems:
        summary = "all good"
    elif args.fix:
        summary = "fixed" if not unfixed else f"{unfixed} problem(s) remain"
    else:
        summary = (f"{len(bad)} bad, {len(left)} leftover(s), {len(folders)} unsafe folder(s); run "
                   "`exprc cache verify --fix` to remove bad entries and leftovers")
    print(f"verified {what} in {r}: {summary}")
    return 0 if (not problems or (args.fix and not unfixed)) else 1


def cmd_prune(args: argparse.Namespace) -> int:
    from exprc import cache
    from exprc.config import current

    r = _root()
    es = _load_entries(r)
    if not r.exists():
        print(f"The exprc cache is empty: {r} does not exist yet; nothing to prune.")
        return 0
    removed, freed = 0, 0
    if args.older_than is not None:
        cutoff = time.time() - args.older_than
        for e in es:
            if e.last_used < cutoff and cache.evict(e.path):
                removed += 1
                freed += e.size
    max_bytes = args.max_size if args.max_size is not None else (
        current().cache_max_bytes if args.older_than is None else None)
    if max_bytes is not None:
        sizes = {e.key: e.size for e in cache.entries(r)}
        for key in cache.enforce_limit(r, max_bytes):
            removed += 1
            freed += sizes.get(key, 0)
    for p in cache.leftovers(r):
        shutil.rmtree(p, ignore_errors=True)
    remaining = cache.entries(r)
    print(f"removed {removed} entries ({human_size(freed)}); {len(remaining)} entries "
          f"({human_size(sum(e.size for e in remaining))}) remain in {r}")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    from exprc import cache

    r = _root()
    es = _load_entries(r)
    left = cache.leftovers(r)
    if not r.exists() or (not es and not left):
        _empty(r, es)
        return 0
    if not args.yes:
        prompt = f"Remove all {len(es)} entries ({human_size(sum(e.size for e in es))}) from {r}? [y/N] "
        print(prompt, end="", flush=True)
        try:
            answer = sys.stdin.readline() if sys.stdin is not None else ""
        except (OSError, ValueError):
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("\naborted; nothing removed" if not answer.endswith("\n") else "aborted; nothing removed")
            return 1
    errors: list[str] = []
    n = sum(cache.evict(e.path, errors) for e in es)
    for p in left:
        shutil.rmtree(p, ignore_errors=True)
    cache.remove_unheld_locks(r)
    from exprc import graph_index

    graph_index.clear(r)  # (records of removed entries would only be misses; cleared, they take no space)
    print(f"removed {n} entries from {r}")
    if errors:  # say what stayed (a read-only or full file system), never count it as removed
        print(f"could not remove {len(errors)} entries: {'; '.join(errors[:5])}" + ("; …" if len(errors) > 5 else "")
              + f". Is {r} read-only? Remove it with the rights to, or set EXPRC_CACHE_DIR to another folder.")
        return 1
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    from exprc import cache

    r = _root()
    cache.check_safe(r)
    locks = sorted((r / "locks").glob("*.lock")) if (r / "locks").is_dir() else []
    if not locks:
        print(f"no lock files in {r / 'locks'}")
        return 0
    removed = cache.remove_unheld_locks(r)
    held = len(locks) - len(removed)
    print(f"removed {len(removed)} stale lock file(s)" + (f"; {held} held by running compiles (kept)" if held else ""))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``exprc report FILE -o OUT``: the HTML report of a function saved with ``exprc.save``."""
    import numpy as np

    from exprc import serialize
    from exprc.errors import ExprcError

    try:
        f = serialize.load(args.file)
    except (OSError, ExprcError, ValueError) as exc:
        print(f"exprc report: {args.file}: {exc}", file=sys.stderr)
        return 1
    if not hasattr(f, "report"):
        print(f"exprc report: {args.file} holds a {type(f).__name__}, not a compiled function", file=sys.stderr)
        return 1
    if args.profile:  # (a profiled copy, called on ones of each input's dtype and a small shape)
        import exprc

        g = exprc.function(list(f.inputs), f.outputs if len(f.outputs) > 1 else f.outputs[0], profile=True)
        arrays = [np.ones(tuple(s if s is not None else 8 for s in v.type.shape), v.dtype) for v in f.inputs]
        for _ in range(args.profile):
            g(*arrays)
        f = g
    f.report(args.output)
    print(f"wrote {args.output}")
    return 0


# -- parser ----------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(prog="exprc", description="exprc expression compiler")
    parser.add_argument("--version", action="version", version=f"exprc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cp = sub.add_parser("cache", help="inspect and maintain the compile cache",
                        description="Inspect and maintain the compile cache (EXPRC_CACHE_DIR selects another folder).")
    cs = cp.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")

    p = sub.add_parser("report", help="write a function's HTML report",
                       description="Write the self-contained HTML report (graphs, rewrites, kernels, source, "
                                   "profile) of a function saved with exprc.save.")
    p.add_argument("file", help="the saved function (exprc.save(f, path))")
    p.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile N calls on arrays of ones (unknown sizes: 8)")
    p.set_defaults(func=cmd_report, parser=p)

    p = cs.add_parser("path", help="print the cache folder", description="Print the cache folder of this exprc "
                      "version (it may not exist yet).")
    p.set_defaults(func=cmd_path)

    p = cs.add_parser("list", help="list the entries", description="List the cache entries.")
    p.add_argument("--sort", choices=sorted(_SORTS), default="key",
                   help="key (A-Z), size (largest first), age (oldest first), used (most recently used first), "
                        "hits (most first); default: key")
    p.add_argument("--reverse", action="store_true", help="reverse the order")
    p.add_argument("--json", action="store_true", help="print a JSON array of objects instead of a table")
    p.set_defaults(func=cmd_list)

    p = cs.add_parser("show", help="show one entry's metadata and source",
                      description="Show an entry's metadata and generated source; a unique key prefix is enough.")
    p.add_argument("key", metavar="KEY", help="the entry key or a unique prefix of it")
    p.add_argument("--html", action="store_true", help="print a self-contained HTML page instead of text")
    p.set_defaults(func=cmd_show)

    p = cs.add_parser("stats", help="summary: entries, size, hits, oldest and newest",
                      description="Print a summary of the cache.")
    p.set_defaults(func=cmd_stats)

    p = cs.add_parser("verify", help="check every entry's sha256 and metadata",
                      description="Check every entry (metadata, sha256 of library and source, permissions) and "
                                  "report leftovers of interrupted builds.  Exit 1 when problems are found.")
    p.add_argument("--fix", action="store_true", help="evict bad entries and remove leftovers")
    p.set_defaults(func=cmd_verify)

    p = cs.add_parser("prune", help="remove old entries or shrink the cache",
                      description="Remove entries not used within --older-than, then least-recently-used entries "
                                  "until the cache fits --max-size.  With neither option, shrink to the configured "
                                  "limit (Config.cache_max_bytes).  Leftovers of interrupted builds are removed too.")
    p.add_argument("--older-than", type=parse_duration, metavar="AGE",
                   help="remove entries last used more than AGE ago (e.g. 30d, 12h)")
    p.add_argument("--max-size", type=parse_size, metavar="SIZE", help="shrink the cache to SIZE (e.g. 500M, 2G)")
    p.set_defaults(func=cmd_prune)

    p = cs.add_parser("clear", help="remove every entry", description="Remove every entry of this exprc version's "
                      "cache.  Asks for confirmation unless -y is given (no answer counts as no).")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_clear)

    p = cs.add_parser("unlock", help="remove lock files that no process holds",
                      description="Remove lock files left by killed processes (locks held by running compiles are "
                                  "kept).  Stale lock files never block a compile; this only tidies up.")
    p.set_defaults(func=cmd_unlock)
    cp.set_defaults(func=None, parser=cp)
    return parser


def main(argv: list[str] | None = None) -> int:
    from exprc.errors import CacheError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    func = getattr(args, "func", None)
    if func is None:
        args.parser.print_help(sys.stderr)
        return 2
    try:
        return func(args)
    except CacheError as exc:
        print(f"exprc cache: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
