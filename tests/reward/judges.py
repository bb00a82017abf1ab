"""Custom judges for the grader tests; module-level so worker processes can unpickle them."""

import os
import signal
import time


def sleeps_forever(answer, gold, entry):
    """A Python-level hang: the worker's soft signal limit stops it."""
    time.sleep(3600)
    return 1.0


def ignores_signals(answer, gold, entry):
    """A hang no signal can stop (as a long C call would be): only killing the worker works."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(3600)
    return 1.0


def crashes(answer, gold, entry):
    """The worker process dies mid-check."""
    os._exit(3)


def exact(answer, gold, entry):
    return 1.0 if answer == gold else 0.0


def raises(answer, gold, entry):
    raise RuntimeError("judge failed")


def crashes_once(answer, gold, entry):
    """The first call (per marker file) kills its worker; a retry in another worker judges."""
    marker = entry["marker"]
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os._exit(3)
    return 1.0 if answer == gold else 0.0
