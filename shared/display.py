"""Showing text that someone else wrote (spec fields, names, reasons, custom code) on a terminal.

A researcher chooses most of what the owner's review prints. Raw, a string can move the cursor
and overwrite earlier lines (ANSI escapes: ESC, CR, backspace), reorder what the owner reads
(bidi overrides U+202A-202E, U+2066-2069), hide characters (zero-width joiners, BOM), or start a
fake line (a newline inside a field). Every such character is shown as a visible escape
(``\\x1b``, ``\\u202e``) instead, and long text is cut with a marker saying how much is left out,
so no field can push the rest of a review off the screen.

Light module (standard library only): the researcher's and the owner's side both use it.
"""
from __future__ import annotations

import unicodedata

# One field on one line: enough for any legitimate spec value, name or reason.
MAX_FIELD_CHARS = 200
# Custom code is shown for a human to read; beyond this it is not readable on a terminal anyway.
MAX_CODE_LINES = 400
MAX_CODE_LINE_CHARS = 300

_BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])
_INVISIBLE = frozenset([0x00AD, 0x180E, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF])
# control, format (bidi, zero-width), surrogate, private use, unassigned, line/paragraph separators
_UNSAFE_CATEGORIES = frozenset(["Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"])


def is_unsafe_char(ch: str) -> bool:
    """True for a character that must not reach a terminal raw (see the module docstring)."""
    o = ord(ch)
    if 0x20 <= o < 0x7F:
        return False
    return (o < 0x20 or 0x7F <= o <= 0x9F or o in _BIDI or o in _INVISIBLE
            or unicodedata.category(ch) in _UNSAFE_CATEGORIES)


def _visible(ch: str) -> str:
    o = ord(ch)
    if o <= 0xFF:
        return f"\\x{o:02x}"
    if o <= 0xFFFF:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def _escape_chars(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    return "".join(_visible(c) if is_unsafe_char(c) else c for c in text)


def _text(value) -> str:
    """A string as is; anything else as its repr (quotes show where a nested string ends)."""
    return value if isinstance(value, str) else repr(value)


def escape(value, max_chars: int = MAX_FIELD_CHARS) -> str:
    """``value`` (a string, or any value: its repr) as one safe line: every control, bidi and
    invisible character (newlines too) as a visible escape, cut after ``max_chars`` characters
    with a marker giving how many were left out."""
    text = _text(value)
    if len(text) <= max_chars:
        return _escape_chars(text)
    return f"{_escape_chars(text[:max_chars])}...[{len(text) - max_chars} more chars not shown]"


def escape_lines(text, max_lines: int = MAX_CODE_LINES,
                 max_line_chars: int = MAX_CODE_LINE_CHARS) -> list[str]:
    """Multi-line text (custom code, a rendered report) as safe lines: split on newlines
    only, tabs expanded, everything else as in :func:`escape`; at most ``max_lines`` lines,
    then one marker line."""
    lines = _text(text).split("\n")
    out = [escape(line.expandtabs(4), max_line_chars) for line in lines[:max_lines]]
    if len(lines) > max_lines:
        out.append(f"...[{len(lines) - max_lines} more lines not shown]")
    return out


def escape_block(text, max_lines: int = MAX_CODE_LINES,
                 max_line_chars: int = MAX_CODE_LINE_CHARS) -> str:
    """:func:`escape_lines` joined with newlines."""
    return "\n".join(escape_lines(text, max_lines, max_line_chars))


def brief(value, max_chars: int = 80) -> str:
    """A value for an error message: its repr, escaped and cut short (a refused spec field may
    be megabytes long, and error messages are shown to the owner too)."""
    return escape(repr(value), max_chars)
