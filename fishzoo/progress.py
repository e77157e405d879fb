"""Progress of a step that can take long: a bar on a terminal, a line every :data:`LOG_EVERY_S` seconds where
the output goes to a log file (a container's log, CI), nothing for a step shorter than that."""
import sys
import time
from typing import Optional, TextIO

LOG_EVERY_S = 30.0


class Progress:
    """``update(n)`` as items finish; ``close()`` at the end. On a terminal a tqdm bar (left behind on close);
    elsewhere a line ``done/total what (rate/s)`` at most every ``every`` seconds."""

    def __init__(self, total: int, what: str = 'images', file: Optional[TextIO] = None,
                 every: Optional[float] = None):
        self.file = file or sys.stderr
        self.total, self.what = total, what
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.every = LOG_EVERY_S if every is None else every
        self.bar = None
        if getattr(self.file, 'isatty', lambda: False)():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit=' ' + what, file=self.file, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            print(f'{self.done:,}/{self.total:,} {self.what} ({self.done / (now - self.start):.1f}/s)',
                  file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
