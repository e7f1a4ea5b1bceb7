"""How a run talks to whoever launched it: JSON-lines progress out, a stop request in."""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class ProgressLog:
    """Append-only JSON lines; each line is complete when flushed, so a reader never sees half an event."""

    def __init__(self, path: str | None, enabled: bool = True):
        self.path = Path(path) if (path and enabled) else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        log.info("%s %s", event, {k: v for k, v in fields.items() if k != "history"})
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()


class Stage:
    """One preparation stage (decoding the photos, the teacher's pass) as 'prepare' events, at most one a second
    and always the last, so the Train page shows a bar and an ETA before the first training step."""

    def __init__(self, progress: ProgressLog, name: str, total: int, every_s: float = 1.0):
        self.progress, self.name, self.total, self.every_s = progress, name, total, every_s
        self.t0 = self.last = time.time()

    def update(self, done: int, total: int | None = None) -> None:
        now = time.time()
        if done < self.total and now - self.last < self.every_s:
            return
        self.last = now
        self.progress.emit("prepare", stage=self.name, done=done, total=total or self.total,
                           elapsed_s=round(now - self.t0, 2))


class Stopped(Exception):
    """Raised where a stop request is noticed outside the training steps (decoding, the teacher's pass)."""


class StopRequest:
    """Set by SIGTERM or by the stop file appearing; agreed across ranks so every process stops together."""

    def __init__(self, stop_file: str | None):
        self.stop_file = Path(stop_file) if stop_file else None
        self.flag = False
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._on_term)
        else:
            self._old = None

    def _on_term(self, *_: Any) -> None:
        self.flag = True

    def requested(self, here_only: bool = False) -> bool:
        """``here_only``: this process's answer, without asking the others (for rank 0 alone, once they left)."""
        local = self.flag or bool(self.stop_file and self.stop_file.exists())
        if not here_only and dist.is_available() and dist.is_initialized():
            t = torch.tensor([1.0 if local else 0.0])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            local = bool(t.item() > 0)
        return local

    def check(self) -> None:
        """Raise ``Stopped`` if a stop was asked for: called every few images while decoding and caching, so a
        cancel is honoured within seconds at any stage."""
        if self.requested():
            raise Stopped

    def check_here(self) -> None:
        """``check`` for one process alone: after training, the other ranks have returned."""
        if self.requested(here_only=True):
            raise Stopped

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
