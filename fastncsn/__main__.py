"""``python -m fastncsn`` = the ``fastncsn`` command."""
import sys

from .cli import main

sys.exit(main())
