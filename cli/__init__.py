"""The ``erynoa`` command: the composition root above every layer (``cli.main``)."""
