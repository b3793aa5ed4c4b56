"""A systemd EnvironmentFile, read the way systemd reads it (systemd's env-file.c), so that `azamrecon
--env-file` and the units' `EnvironmentFile=` see the same values from the same file.

- KEY=VALUE, one per line; whitespace around the key and around `=` is dropped, and so is trailing
  whitespace of an unquoted value.
- Lines whose first non-blank character is `#` or `;` are comments.
- 'single quotes': literal; "double quotes": `\\"`, `\\\\`, `\\$` and `` \\` `` are unescaped, any other
  backslash is kept. Quoted parts and unquoted parts concatenate (`a'b'c` is abc).
- A backslash at the end of a line continues the value (in a comment too); outside quotes a backslash
  keeps the next character literally.
- No `$` expansion, no `export`: `pa$$w0rd` stays `pa$$w0rd` (bash would expand `$$`).

Stricter than systemd, which skips them with a warning in the journal: a line without `=`, an invalid
name or an unterminated quote is a one-line error naming the file and the line.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DOUBLE_QUOTE_ESCAPES = '"\\`$'
_BLANK = " \t"


def read_env_file(path: str | Path) -> dict[str, str]:
    """The file's assignments, in order (a name assigned twice keeps the last value). ConfigError when the
    file cannot be read or a line is not an assignment."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"env file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read env file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_env_text(text, str(path))


def parse_env_text(text: str, name: str = "env file") -> dict[str, str]:
    values: dict[str, str] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    number = 0
    while number < len(lines):
        start = number
        line = lines[number].lstrip(_BLANK)
        number += 1
        if not line or line[0] in "#;":
            while line.endswith("\\") and number < len(lines):  # systemd continues a comment too
                line = lines[number]
                number += 1
            continue
        key, sep, rest = line.partition("=")
        key = key.strip(_BLANK)
        if not sep:
            raise ConfigError(f"{name} line {start + 1}: not KEY=VALUE (systemd EnvironmentFile syntax)")
        if not _NAME.match(key):
            raise ConfigError(f"{name} line {start + 1}: {key[:40]!r} is not a variable name")
        value, number = _value(rest, lines, number, f"{name} line {start + 1}")
        values[key] = value
    return values


def _value(rest: str, lines: list[str], number: int, where: str) -> tuple[str, int]:
    """The value starting at `rest` (the text after `=`), reading continuation lines; (value, next line)."""
    out: list[str] = []
    trailing = None  # where unquoted trailing whitespace started in `out`, to be dropped at the end
    text, i = rest.lstrip(_BLANK), 0
    while True:
        if i >= len(text):
            break
        char = text[i]
        if char in "'\"":
            quote, i = char, i + 1
            while True:
                if i >= len(text):  # the quote spans lines
                    if number >= len(lines):
                        raise ConfigError(f"{where}: unterminated {quote} quote")
                    out.append("\n")
                    text, i, number = lines[number], 0, number + 1
                    continue
                char = text[i]
                if char == quote:
                    i += 1
                    break
                if quote == '"' and char == "\\":
                    if i + 1 >= len(text):  # escaped newline: eaten
                        if number >= len(lines):
                            raise ConfigError(f"{where}: unterminated {quote} quote")
                        text, i, number = lines[number], 0, number + 1
                        continue
                    following = text[i + 1]
                    out.append(following if following in _DOUBLE_QUOTE_ESCAPES else "\\" + following)
                    i += 2
                    continue
                out.append(char)
                i += 1
            trailing = None
            # systemd goes back to "before a value" after a closing quote: blanks there are skipped
            while i < len(text) and text[i] in _BLANK:
                i += 1
            continue
        if char == "\\":
            if i + 1 >= len(text):  # line continuation
                if number >= len(lines):
                    break
                text, i, number = lines[number], 0, number + 1
                trailing = None
                continue
            out.append(text[i + 1])
            trailing = None
            i += 2
            continue
        if char in _BLANK:
            if trailing is None:
                trailing = len(out)
        else:
            trailing = None
        out.append(char)
        i += 1
    if trailing is not None:
        del out[trailing:]
    return "".join(out), number
