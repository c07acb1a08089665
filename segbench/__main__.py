"""``python -m segbench <verb>``: the same as the ``segbench`` command."""

from segbench.cli import main

raise SystemExit(main())
