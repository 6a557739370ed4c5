"""Errors shared by job specs and the algorithms they run (a leaf: imports nothing)."""


class SpecError(ValueError):
    """A spec cannot run; the message says what to change."""
