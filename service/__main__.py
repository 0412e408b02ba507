"""``python -m service`` is ``gradient-service``."""

from service.cli import main

main()
