"""User-facing error text: one line, without the library source paths that Lance (Rust), Ray (C++)
and Python tracebacks append."""

from __future__ import annotations

import re

_SOURCE_PATH = re.compile(r",?\s*(?:/|[A-Za-z]:\\)\S*\.(?:rs|cc|h):\d+(?::\d+)?"
                          r'|,?\s*(?:File )?"(?:/|[A-Za-z]:\\)[^"]*\.py", line \d+')
_LIBRARY_PREFIX = re.compile(r"^(?:External error: |LanceError\(\w+\): )+")


def clean_error(error: BaseException | str) -> str:
    """One line of a Lance/Arrow/Ray error: no source paths, no wrapper prefixes."""
    text = " ".join(str(error).split())
    text = _SOURCE_PATH.sub("", text)
    return _LIBRARY_PREFIX.sub("", text).strip() or type(error).__name__
