"""SIGTERM / SIGINT during training: finish the batch, save a checkpoint, exit cleanly.

A cluster scheduler sends SIGTERM before it kills a job, and Ctrl-C sends SIGINT; either way the run
should leave a checkpoint it can resume from. :class:`StopSignals` is a context around the run that
records the signal; the loop asks :meth:`StopSignals.requested` after each optimizer step.
"""
import logging
import signal
import threading
from typing import Dict, Optional

import torch
from accelerate import Accelerator

_logger = logging.getLogger('fishzoo.train')

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Records SIGTERM / SIGINT while active; a second signal stops at once (KeyboardInterrupt).

    Handlers can only be installed from the main thread: a run started from a worker thread (a notebook
    helper, a service) simply does not react to signals.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> 'StopSignals':
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        _logger.warning('%s received: saving a checkpoint at the end of this batch', signal.Signals(signum).name)

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether a signal arrived, agreed by every process so that all of them save the same checkpoint."""
        flag = self.signum is not None
        if accelerator.num_processes > 1:
            flag = bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), 'max').item())
            if flag and self.signum is None:  # another process was signalled
                self.signum = signal.SIGTERM
        return flag

    @property
    def exit_code(self) -> int:
        return 130 if self.signum == signal.SIGINT else 0
