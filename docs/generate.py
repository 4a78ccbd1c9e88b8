"""Regenerate the argument tables in README.md and docs/*.md from the code.

A page holds a generated block between two markers::

    <!-- generated:NAME:start -->
    ...table written by this script...
    <!-- generated:NAME:end -->

``python docs/generate.py`` rewrites every block; ``python docs/generate.py --check`` rewrites
nothing, lists the stale blocks and exits 1 if there are any (``tests/test_docs.py`` runs it).

To add a table: write a function returning its Markdown, add it to ``GENERATORS`` under a new
NAME, and put the two markers where the table belongs. Every NAME must appear in some page, and
every marker must name a generator, so a table cannot silently stop being regenerated.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python docs/generate.py` from anywhere
    sys.path.insert(0, str(ROOT))

MARKER = re.compile(
    r"(<!-- generated:(?P<name>[\w.-]+):start -->\n)(?P<body>.*?)(<!-- generated:(?P=name):end -->)",
    re.DOTALL,
)


# ------------------------------------------------------------------------------ Markdown


def _cell(text: str) -> str:
    """One table cell: docstring markup to Markdown, characters tables and GitHub would eat
    escaped."""
    text = " ".join(text.split())
    text = text.replace("``", "`")
    text = re.sub(r":(?:class|meth|func|attr):`([^`]+)`", r"`\1`", text)
    # Pipes end a cell even inside code spans; < and > would be read as HTML outside them.
    text = text.replace("|", "\\|")
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside code spans only
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(parts)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _code(value: object) -> str:
    return "`" + repr(value).replace("|", "\\|") + "`"


# ------------------------------------------------------------------------------ docstrings


def docstring_section(obj: object, section: str) -> dict[str, str]:
    """The entries of a Google-style docstring section (``Args:``, ``Keys:``): name -> text.

    An entry ``mean, std: text`` gives both names the text; ``NAME (type): text`` keeps the
    type in the text as ``(type) text``.
    """
    doc = inspect.getdoc(obj) or ""
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == f"{section}:")
    except StopIteration:
        raise ValueError(f"{_name(obj)}'s docstring has no {section}: section") from None
    indent = len(lines[start]) - len(lines[start].lstrip())
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    entry_indent = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= indent:
            break
        if entry_indent is None:
            entry_indent = depth
        if depth == entry_indent:
            match = re.match(r"\s*([\w*, ]+?)\s*(\([^)]*\))?:\s*(.*)", line)
            if not match:
                raise ValueError(f"cannot read {section} entry {line.strip()!r} of {_name(obj)}")
            names, kind, text = match.groups()
            current = [f"{kind} {text}" if kind else text]
            for name in names.split(","):
                entries[name.strip().lstrip("*")] = current
        elif current is not None:
            current.append(line.strip())
    return {name: " ".join(parts) for name, parts in entries.items()}


def _name(obj: object) -> str:
    return getattr(obj, "__qualname__", type(obj).__name__)


def signature_table(cls: type) -> str:
    """``argument | default | meaning`` for ``cls.__init__``: defaults from the signature,
    meanings from the class docstring's ``Args:``. Every argument must be documented there,
    and every documented one must exist."""
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    docs = docstring_section(cls, "Args")
    names = {p.name for p in params}
    undocumented = [p.name for p in params if p.name not in docs]
    unknown = [n for n in docs if n not in names]
    if undocumented or unknown:
        raise ValueError(
            f"{cls.__qualname__}: arguments missing from its docstring's Args: {undocumented}; "
            f"documented but not in the signature: {unknown}"
        )
    rows = []
    for p in params:
        name = f"`{p.name}`"
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            name += " (keyword)"
        default = "required" if p.default is inspect.Parameter.empty else _code(p.default)
        rows.append((name, default, _cell(docs[p.name])))
    return _table(("argument", "default", "meaning"), rows)


# ------------------------------------------------------------------------------ command lines


def _invocation(action: argparse.Action) -> str:
    option = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{option}`"
    if action.choices is not None:
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        metavar = action.metavar or action.dest.upper()
    if action.nargs == "+":
        args = f"{metavar} [{metavar} ...]"
    elif action.nargs == "*":
        args = f"[{metavar} ...]"
    elif action.nargs == argparse.REMAINDER:
        args = f"{metavar} ..."
    elif action.nargs == "?":
        args = f"[{metavar}]"
    else:
        args = metavar
    return f"`{option} {args}`"


def option_table(parser: argparse.ArgumentParser) -> str:
    """``option | default | meaning`` for every option of ``parser`` but ``--help``."""
    rows = []
    for action in parser._actions:  # argparse has no public list of its actions
        if isinstance(action, argparse._HelpAction):
            continue
        if action.required:
            default = "required"
        elif action.nargs == 0 or action.default in (None, [], ()):
            default = "–"
        elif isinstance(action.default, list):
            default = "`" + " ".join(str(v) for v in action.default) + "`"
        else:
            default = f"`{action.default}`"
        if isinstance(action, argparse._AppendAction):
            default += " (repeatable)"
        rows.append((_invocation(action), default, _cell(action.help or "")))
    return _table(("option", "default", "meaning"), rows)


def lightning_gradcam_options() -> str:
    from lightning_gradcam.cli import build_parser

    return option_table(build_parser())


def detectron2_gradcam_options() -> str:
    from detectron2_hooks.cli import build_parser

    return option_table(build_parser())


# ------------------------------------------------------------------------------ classes


def callback_args() -> str:
    from lightning_gradcam.lightning.callback import GradCAMCallback

    return signature_table(GradCAMCallback)


def engine_args() -> str:
    from lightning_gradcam import CAMEngine

    return signature_table(CAMEngine)


def hook_args() -> str:
    from detectron2_hooks import GradCAMHook

    return signature_table(GradCAMHook)


def detection_cam_args() -> str:
    from detectron2_hooks import Detectron2CAM

    return signature_table(Detectron2CAM)


def gradcam_config() -> str:
    """``cfg.GRADCAM.*``: defaults from ``add_gradcam_config(get_cfg())``, meanings from its
    docstring's ``Keys:``."""
    from detectron2.config import get_cfg

    from detectron2_hooks.config import add_gradcam_config

    node = add_gradcam_config(get_cfg()).GRADCAM
    docs = docstring_section(add_gradcam_config, "Keys")
    missing = [k for k in node if k not in docs]
    if missing:
        raise ValueError(f"cfg.GRADCAM keys missing from add_gradcam_config's Keys: {missing}")
    rows = [(f"`GRADCAM.{key}`", _code(node[key]), _cell(docs[key])) for key in node]
    return _table(("key", "default", "meaning"), rows)


GENERATORS: dict[str, Callable[[], str]] = {
    "lightning-gradcam-options": lightning_gradcam_options,
    "detectron2-gradcam-options": detectron2_gradcam_options,
    "engine-args": engine_args,
    "callback-args": callback_args,
    "detection-cam-args": detection_cam_args,
    "hook-args": hook_args,
    "gradcam-config": gradcam_config,
}


# ------------------------------------------------------------------------------ pages


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def regenerate(write: bool) -> list[str]:
    """Bring every generated block up to date (or only compare, with ``write=False``).
    Returns the stale blocks as ``page:NAME``."""
    stale: list[str] = []
    seen: set[str] = set()
    cache: dict[str, str] = {}

    for page in pages():
        text = page.read_text(encoding="utf-8")

        def fill(match: re.Match, page: Path = page) -> str:
            name = match["name"]
            if name not in GENERATORS:
                raise SystemExit(
                    f"{page.relative_to(ROOT)}: no generator named {name!r} in docs/generate.py"
                )
            seen.add(name)
            if name not in cache:
                cache[name] = GENERATORS[name]()
            if match["body"] != cache[name]:
                stale.append(f"{page.relative_to(ROOT)}:{name}")
            return match.group(1) + cache[name] + match.group(4)

        new = MARKER.sub(fill, text)
        if write and new != text:
            page.write_text(new, encoding="utf-8")
    absent = sorted(set(GENERATORS) - seen)
    if absent:
        raise SystemExit(f"generated blocks in no page (add their markers): {', '.join(absent)}")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 listing stale blocks"
    )
    args = parser.parse_args(argv)
    stale = regenerate(write=not args.check)
    if args.check and stale:
        print("stale generated blocks (run python docs/generate.py):", file=sys.stderr)
        for block in stale:
            print(f"  {block}", file=sys.stderr)
        return 1
    if not args.check:
        print(f"regenerated {len(stale)} block(s)" if stale else "all blocks up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
