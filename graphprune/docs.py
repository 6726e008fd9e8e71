"""The parts of the README that are generated from the code: the ``prune`` usage line (from
the CLI's parser, itself built from ``graphprune.options.OPTIONS``) and the list of criteria
and reconstructions (from their registries). ``python -m graphprune.docs README.md``
rewrites them in place; a test fails when the README is out of date."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from .options import epilog

BLOCK = re.compile(r"(<!-- generated: (\S+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def prune_usage(columns: int = 96) -> str:
    from .cli import _parser  # the parser is the CLI's; docs only read it

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        sub = next(a for a in _parser()._actions if a.dest == "cmd")
        return sub.choices["prune"].format_usage().strip()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


GENERATORS = {"prune-usage": prune_usage, "choices": epilog}


def render(text: str) -> str:
    """``text`` with every generated block rewritten."""

    def block(m: re.Match) -> str:
        body = GENERATORS[m.group(2)]()
        return f"{m.group(1)}```\n{body}\n```\n{m.group(4)}"

    return BLOCK.sub(block, text)


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0] if args else "README.md")
    text = path.read_text()
    new = render(text)
    if new != text:
        path.write_text(new)
    print(f"{path}: {'updated' if new != text else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
