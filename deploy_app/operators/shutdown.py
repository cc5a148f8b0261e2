"""SIGTERM / SIGINT end a run cleanly: the sources under way are finished (or dropped whole), the rest not started.

Holoscan runs the operators from its own threads while the main thread waits inside ``app.run()``, so a Python
signal handler would only run after the whole study. Instead :func:`install` blocks both signals in the calling
thread *before* any other thread exists (every thread created later inherits the mask, so no thread can be killed
by them), and one small thread takes them with :func:`signal.sigwait` and sets :data:`STOP`. The study loader
checks :data:`STOP` before each source; the report then lists the sources not started. A second signal ends the
process at once (exit 128 + signal number); the staging of the output folder keeps that safe too.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

STOP = threading.Event()
#: The name of the signal that stopped the run, once one did.
received: list[str] = []

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install() -> None:
    """Block SIGTERM/SIGINT in this thread (and so in every thread created later); a watcher thread receives them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)

    def watch() -> None:
        while True:
            number = signal.sigwait(_SIGNALS)
            name = signal.Signals(number).name
            if STOP.is_set():  # a second signal: stop now (staging keeps the output folder consistent)
                logging.getLogger("ultraad.deploy").error("second %s: stopping at once", name)
                os._exit(128 + number)
            received.append(name)
            logging.getLogger("ultraad.deploy").warning(
                "%s received: finishing the source(s) under way, starting no new one", name)
            STOP.set()

    threading.Thread(target=watch, name="ultraad-signals", daemon=True).start()


def requested() -> bool:
    return STOP.is_set()
