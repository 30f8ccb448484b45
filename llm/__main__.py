"""``python -m llm synth --out DIR`` and ``python -m llm run --config CONFIG``."""

from llm.cli import main

raise SystemExit(main())
