"""``python -m loader`` is the ``loader`` command."""

from loader.cli import main

main()
