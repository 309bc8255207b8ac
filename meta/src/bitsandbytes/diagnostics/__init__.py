"""Diagnostics in the established release's layout (``bitsandbytes.diagnostics``, spec §11.2):
``main`` (the report of ``python -m bitsandbytes``), ``cuda`` (where CUDA runtime libraries are
found) and ``utils`` (printing helpers)."""
