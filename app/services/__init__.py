"""Business logic. Every function takes a ``session`` and only flushes: the caller commits."""
