"""Failure fingerprints: one stable id per bug, the same in every process and every run.

A fingerprint hashes three things:

* the error type's qualified name (``myapp.errors.Boom``, ``ValueError`` for builtins);
* the error message with its variable parts replaced: quoted values, UUIDs, hex strings and
  numbers (so ``user 42 not found`` and ``user 7 not found`` are one bug);
* the innermost frame of *user* code in the traceback, as ``file.py:function`` with the file's
  last two path components; frames from the standard library, site-packages, Dramatiq and
  fairway are library code and skipped. Line numbers are left out so that an edit elsewhere in
  the file does not split a bug in two.

Python's ``hash()`` is salted per process, so SHA-256 is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import sysconfig
from pathlib import PurePath

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b")
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line \d+, in (?P<function>\S+)', re.MULTILINE)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_DIRS = tuple(
    {
        os.path.abspath(path) + os.sep
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (path := sysconfig.get_path(key))
    }
)
_LIBRARY_MARKERS = ("site-packages", "dist-packages", "<frozen ")


def normalise_message(message: str) -> str:
    """``message`` with its variable parts (quoted values, UUIDs, hex, numbers) replaced by tokens."""
    message = _QUOTED.sub("<str>", message)
    message = _UUID.sub("<uuid>", message)
    message = _HEX.sub("<hex>", message)
    return _NUMBER.sub("<n>", message).strip()


def innermost_user_frame(traceback_text: str | None) -> str:
    """``dir/file.py:function`` of the innermost frame of user code in ``traceback_text``, or ``""``."""
    if not traceback_text:
        return ""
    frames = [(m.group("path"), m.group("function")) for m in _FRAME.finditer(traceback_text)]
    for path, function in reversed(frames):
        if not _is_library(path):
            return f"{'/'.join(PurePath(path).parts[-2:])}:{function}"
    return ""


def fingerprint(error_type: str | None, error_message: str | None, traceback_text: str | None) -> str:
    """A 16-hex-digit id for the bug behind a failure."""
    parts = (error_type or "", normalise_message(error_message or ""), innermost_user_frame(traceback_text))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _is_library(path: str) -> bool:
    if any(marker in path for marker in _LIBRARY_MARKERS) or path.startswith("<"):
        return True
    absolute = os.path.abspath(path)
    return absolute.startswith(_PACKAGE_DIR + os.sep) or absolute.startswith(_LIBRARY_DIRS)
