"""A graceful stop on Ctrl-C (SIGINT) or SIGTERM: finish the update, save resume/, exit cleanly."""

from __future__ import annotations

import logging
import signal
import threading

from varattn.errors import VarattnError

log = logging.getLogger("varattn")


class TrainingStopped(VarattnError):
    """Training stopped on a signal after saving its resume state; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class GracefulStop:
    """While active (a ``with`` block in the main thread), SIGINT and SIGTERM only set :attr:`signum`.

    The training loop checks it between updates. The first signal puts the previous handlers back,
    so a second Ctrl-C stops at once (KeyboardInterrupt) without waiting for the save.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signum = signum
        self._restore()
        log.warning("%s received: finishing this update and saving resume/ (again to stop at once)",
                    signal.Signals(signum).name)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()
