"""``python -m erynoa`` is the ``erynoa`` command."""

from erynoa.cli import main

main()
