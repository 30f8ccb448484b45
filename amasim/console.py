"""What the command lines (``amasim``, ``python -m llm``) do when something goes wrong.

* :func:`error_line` prints ``error: <what>, <where>. Fix: <how>`` on a line of its own:
  a live progress bar is cleared first, so the message never shares its line.
* :func:`ignore_file_size_signal`: under ``ulimit -f`` a write past the limit raises
  ``SIGXFSZ``, which kills the process without a word; ignored, the write fails with
  ``EFBIG`` ("File too large") and the failure is named like any other.
* :func:`with_fix` gives a message that lacks one its ``Fix:`` part.

Torch-free and llm-free: :mod:`amasim.cli` and :mod:`llm.cli` both use it.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from typing import TextIO

__all__ = ["clear_progress_bars", "error_line", "ignore_file_size_signal", "with_fix"]

#: a clause that already says what to do: "...; pass a folder", "...: use one of ..."
_ADVICE = re.compile(
    r"[:;,] (?=(?:pass|use|give|choose|set|lower|raise|add|remove|delete|run|make|rename|"
    r"check|call|compute|drop|list|resume|fix|point|install|increase|decrease)\b)"
)


def clear_progress_bars() -> None:
    """Close every live tqdm progress bar (a bar that is not kept clears its line)."""
    if "tqdm" not in sys.modules:
        return
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        try:
            bar.close()
        except Exception:  # a bar half torn down by the error itself
            pass


def error_line(message: str, file: TextIO | None = None) -> None:
    """Print ``error: message`` on a line of its own (progress bars cleared first)."""
    clear_progress_bars()
    print(f"error: {message}", file=sys.stderr if file is None else file, flush=True)


def ignore_file_size_signal() -> None:
    """Ignore ``SIGXFSZ`` (main thread, POSIX), so a write past ``ulimit -f`` raises
    ``OSError(EFBIG)`` — named by the writers — instead of killing the process."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def with_fix(message: str, fallback: str) -> str:
    """``message`` with a ``Fix:`` part: its own advice clause (``...: pass a folder``)
    restated as ``... Fix: pass a folder``, else ``fallback`` appended.

    >>> with_fix("--seeds 1: the intervals need --seeds >= 2", "see --help")
    '--seeds 1: the intervals need --seeds >= 2. Fix: see --help'
    >>> with_fix("--out x is a file, not a folder: pass a folder", "see --help")
    '--out x is a file, not a folder. Fix: pass a folder'
    """
    message = message.rstrip()
    if "Fix:" in message:
        return message
    found = list(_ADVICE.finditer(message))
    if found:
        cut = found[-1]
        return f"{message[: cut.start()].rstrip('.')}. Fix: {message[cut.end() :]}"
    return f"{message.rstrip('.')}. Fix: {fallback}"
