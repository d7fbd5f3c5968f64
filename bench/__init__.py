"""The benchmark (``python bench/run.py``): its parts, importable as ``bench.<part>``."""
