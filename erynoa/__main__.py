"""``python -m erynoa`` is the ``erynoa`` command."""

from cli.main import main

main()
