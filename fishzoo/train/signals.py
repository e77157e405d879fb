"""SIGTERM / SIGINT during training: finish the batch, save a checkpoint, exit cleanly.

A cluster scheduler sends SIGTERM before it kills a job, and Ctrl-C sends SIGINT; either way the run
should leave a checkpoint it can resume from. :class:`StopSignals` is a context around the run that
records the signal; the loop asks :meth:`StopSignals.requested` after each optimizer step.

Under ``accelerate launch`` (and torchrun) a signal to the process group reaches the launcher too, which
at once sends its own SIGTERM to the training process: the same request a few milliseconds later, not a
second one. A repeat within :data:`REPEAT_WINDOW_S` is therefore ignored; a signal after that (Ctrl-C pressed
again) stops at once. The launcher kills the process 5 s after its own signal, so the log says so there.
"""
import logging
import os
import signal
import threading
import time
from typing import Dict, Optional

import torch
from accelerate import Accelerator

_logger = logging.getLogger('fishzoo.train')

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 3.0  # a signal this soon after the first is the launcher forwarding it, not a second request
LAUNCHER_KILL_S = 5  # accelerate launch: SIGKILL this long after its SIGTERM


def under_a_launcher() -> bool:
    """Started by ``accelerate launch`` or torchrun (they forward a signal, then kill after a delay)."""
    return any(k in os.environ for k in ('ACCELERATE_MIXED_PRECISION', 'TORCHELASTIC_RUN_ID'))


class StopSignals:
    """Records SIGTERM / SIGINT while active; a second signal stops at once (KeyboardInterrupt).

    Handlers can only be installed from the main thread: a run started from a worker thread (a notebook
    helper, a service) simply does not react to signals.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self._first_at = 0.0
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
            if time.monotonic() - self._first_at < REPEAT_WINDOW_S:
                return  # the launcher forwarding the same request
            raise KeyboardInterrupt
        self.signum, self._first_at = signum, time.monotonic()
        note = (f' (the launcher ends this process {LAUNCHER_KILL_S} s after the signal: a batch and save that '
                'take longer are lost, and the last checkpoint written stays)') if under_a_launcher() else ''
        _logger.warning('%s received: saving a checkpoint at the end of this batch%s', signal.Signals(signum).name,
                        note)

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
