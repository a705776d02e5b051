"""Per-slide locks: ``slides/<id>/.lock`` keeps two processes off the same slide.

The lock file holds ``host pid`` and its modification time is a heartbeat, refreshed every
``HEARTBEAT_S`` by a thread while the holder works. A lock is stale, and taken over, when its
heartbeat is older than ``EXPIRE_S`` (any host: a crashed node stops beating) or when its
process is gone on this host. A live lock is respected: the slide is reported as not done.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

HEARTBEAT_S = 30.0
EXPIRE_S = 600.0


class SlideLock:
    def __init__(self, folder: Path, expire_s: float = EXPIRE_S):
        self.path = folder / ".lock"
        self.expire_s = expire_s
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self, force: bool = False) -> bool:
        """Take the lock (``force``: even from a live holder); False when another holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not (force or self.stale()):
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self.held = True
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
            return True
        return False

    def holder(self) -> str:
        """``host pid`` of the holder, as written in the lock."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return "unknown"

    def stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return True
        if age > self.expire_s:
            return True
        if host != socket.gethostname():
            return False  # another machine with a fresh heartbeat: respect it
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        if self.held:
            self._stop.set()
            self.path.unlink(missing_ok=True)
            self.held = False

    def wait(self, poll_s: float = 2.0) -> None:
        """Block until the lock is free or stale."""
        while self.path.exists() and not self.stale():
            time.sleep(poll_s)
