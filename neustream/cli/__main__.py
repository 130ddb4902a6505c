"""`python -m neustream.cli VERB ...` is `neustream VERB ...` (bare GPU machines, no install)."""

import sys

from neustream.cli.main import main

sys.exit(main())
