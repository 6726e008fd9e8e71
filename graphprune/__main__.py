"""``python -m graphprune``: the command line."""

from graphprune.cli import main

raise SystemExit(main())
