"""One reader for the text files a user writes (configs, sweep files, classes.txt, split
lists): UTF-8, with or without a byte-order mark. A file it cannot read is named, with what is
wrong and the encoding it wants, as the caller's error class (exit code 2), never a
UnicodeDecodeError traceback."""

import codecs
from pathlib import Path

from cobra.errors import CobraError


def read_text(path: str | Path, what: str, error: type[CobraError] = CobraError) -> str:
    """The text of `path` (a `what`, e.g. "config file"), decoded as UTF-8 with a leading BOM
    dropped (editors on Windows write one)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise error(f"{what} '{path}' is a directory; give the path of a file") from None
    except FileNotFoundError:
        raise error(f"{what} '{path}' does not exist; check the path") from None
    except OSError as exc:
        raise error(f"cannot read {what} '{path}' ({exc.strerror}); fix its permissions or "
                    f"give another file") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{what} '{path}' is not UTF-8 text (byte 0x{data[exc.start]:02x} on line "
                    f"{line}); save it as UTF-8") from None
