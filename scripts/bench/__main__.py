"""`python -m scripts.bench`: see scripts/bench/run.py."""

from scripts.bench.run import main

raise SystemExit(main())
