"""Allow ``python -m fima_models.cli``."""
import sys

from fima_models.cli import main

sys.exit(main())
