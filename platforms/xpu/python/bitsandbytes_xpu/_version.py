# Written by tools/set_version.py from the repository's VERSION file; do not edit by hand.
__version__ = "1.0.0.dev0"
