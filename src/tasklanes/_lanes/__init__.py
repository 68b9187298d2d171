"""The lanes: one module per kind of work (and one for foreign executors)."""
