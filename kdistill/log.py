"""One logger for the package; the CLI configures it, library code only calls ``log.info``.

Long phases (decoding, the teacher table, speed timing, evaluation) show a progress line on stderr
with a count and an ETA, through :func:`progress_bar`. It appears only after a few seconds, is
redrawn at most twice a second in a terminal and every 30 s in a log file, and only when the
``kdistill.progress`` logger is enabled for INFO: the CLI enables it (``config.progress`` can turn
it off), and a process that logs warnings only (a torchrun rank other than 0) shows none.
"""

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from tqdm import tqdm

log = logging.getLogger("kdistill")
PROGRESS = logging.getLogger("kdistill.progress")
PROGRESS_DELAY_S = 3.0  # phases shorter than this stay silent
PROGRESS_EVERY_S = {"terminal": 0.5, "file": 30.0}  # at most one redraw per this many seconds


def configure(verbose: bool = False) -> None:
    if log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def show_progress(enabled: bool) -> None:
    """``config.progress``: progress lines on (they follow the ``kdistill`` logger's level) or off."""
    PROGRESS.setLevel(logging.NOTSET if enabled else logging.WARNING)


def progress_bar(iterable: Iterable | None = None, *, total: int, what: str, unit: str = "img") -> tqdm:
    """A progress line ``what: 40%|####  | 1200/3000 img [00:12<00:18, 98 img/s]`` on stderr."""
    every = PROGRESS_EVERY_S["terminal" if sys.stderr.isatty() else "file"]
    return tqdm(iterable, total=total, desc=what, unit=unit, leave=False, file=sys.stderr,
                delay=PROGRESS_DELAY_S, mininterval=every, disable=not PROGRESS.isEnabledFor(logging.INFO))


class Counted:
    """``fn`` that advances a progress line by the rows of each batch it is called on; the line
    opens at the first call, so a result read from a cache never shows one."""

    def __init__(self, fn: Callable[[Any], Any], *, total: int, what: str, unit: str = "img"):
        self.fn, self.total, self.what, self.unit = fn, total, what, unit
        self.bar: tqdm | None = None

    def __call__(self, batch: Any) -> Any:
        if self.bar is None:
            self.bar = progress_bar(total=self.total, what=self.what, unit=self.unit)
        out = self.fn(batch)
        self.bar.update(len(batch))
        if self.bar.n >= self.total:
            self.bar.close()
        return out
