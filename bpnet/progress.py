"""Progress within an epoch: a tqdm bar on a terminal, else a plain line now and then."""

import sys
import time

PROGRESS_SECONDS = 10  # without a terminal, a plain progress line at most this often


class EpochProgress:
    """Shows batches done of ``total`` in one epoch.

    ``mode``: "bar" (tqdm, for a terminal), "lines" (a plain line through ``log`` every
    PROGRESS_SECONDS) or None (nothing). ``running()`` gives the loss (and accuracy) so far.
    """

    def __init__(self, mode, log, label, done, total, running):
        self.mode, self.log, self.label, self.total, self.running = mode, log, label, total, running
        self.said = time.perf_counter()
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm  # only a terminal needs it
            self.bar = tqdm(total=total, initial=done, leave=False, desc=label, unit="batch",
                            file=sys.stderr)

    def batch_done(self, b):
        """Batch ``b`` (0-based, of the epoch) is done."""
        if self.bar is not None:
            self.bar.update(b + 1 - self.bar.n)
            if b % 20 == 0:
                self.bar.set_postfix_str(self.running())
        elif self.mode == "lines" and time.perf_counter() - self.said >= PROGRESS_SECONDS:
            self.log(f"{self.label}: batch {b + 1}/{self.total}, {self.running()}")
            self.said = time.perf_counter()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
