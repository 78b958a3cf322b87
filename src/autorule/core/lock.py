"""One writer per artifact: an ``flock`` on ``<stage>/.<name>.lock`` while a job has work to do."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# Locks this process holds, by lock file. A stage that failed keeps its lock until the process
# exits (the OS drops it then, also after a crash); a later run of the same stage in the same
# process (a retry, a test) takes it over rather than waiting for itself.
_HELD_LOCKS: dict[str, int] = {}


def lock_path(artifact: Path) -> Path:
    """The lock file beside an artifact folder (empty; left in place)."""
    return artifact.with_name(f".{artifact.name}.lock")


def acquire_lock(artifact: Path) -> None:
    """Waits until no other process runs the stage that writes ``artifact``.

    Two jobs of a sweep that need the same upstream artifact (the same preprocess or SFT output)
    would otherwise both compute it and delete each other's work folder; with the lock the second
    waits, then finds the artifact complete and does nothing. Uses ``flock``, which the OS
    releases when a process dies; on a file system without it the run goes on unlocked.
    """
    import fcntl

    key = str(lock_path(artifact))
    if key in _HELD_LOCKS:
        return
    lock_path(artifact).parent.mkdir(parents=True, exist_ok=True)
    fd = None
    try:
        # Read-only and world-writable at creation (less the umask): flock needs no write
        # access, so colleagues sharing a paths.root can lock a file one of them created.
        fd = os.open(key, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process that is writing %s (lock %s)", artifact, key)
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as err:
        if fd is not None:
            os.close(fd)
        log.warning("cannot lock %s (%s): concurrent runs of this stage may collide", key, err)
        return
    _HELD_LOCKS[key] = fd


def release_lock(artifact: Path) -> None:
    fd = _HELD_LOCKS.pop(str(lock_path(artifact)), None)
    if fd is not None:
        os.close(fd)
