"""Background training jobs: one subprocess per job, its state on disk, so it survives page reloads and restarts.

A job folder holds ``job.json`` (what was asked), ``progress.jsonl`` (what the trainer reports), ``log.txt``
(stdout/stderr) and, to cancel, a ``stop`` file the trainer polls. Only one job runs at a time.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .data import DatasetError
from .registry import Registry

log = logging.getLogger(__name__)
DEFAULT_JOBS_DIR = Path(__file__).resolve().parent.parent / "runs" / "jobs"
TERMINAL = ("done", "stopped", "error")


class JobError(RuntimeError):
    pass


class JobBusyError(JobError):
    pass


@dataclass(frozen=True)
class JobState:
    id: str
    status: str  # running, done, stopped, failed
    spec: dict[str, Any]
    events: list[dict[str, Any]]
    fraction: float
    eta_s: float | None
    message: str
    model: str | None
    started: float

    @property
    def history(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "epoch"]

    @property
    def losses(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "step"]

    @property
    def preparation(self) -> tuple[str, float, float | None] | None:
        """(stage, fraction done, seconds left) of the latest preparation stage, until training starts."""
        if self.status != "running" or self.losses:
            return None
        prep = [e for e in self.events if e.get("event") == "prepare"]
        if not prep:
            return None
        return _stage(prep[-1])


def _stage(e: dict[str, Any]) -> tuple[str, float, float | None]:
    done, total = e.get("done", 0), max(1, e.get("total", 1))
    eta = e.get("elapsed_s", 0) / done * (total - done) if done else None
    return e.get("stage", "preparing"), min(1.0, done / total), eta


def jobs_dir(root: str | Path | None = None) -> Path:
    d = Path(root or os.environ.get("SKINAPP_JOBS") or DEFAULT_JOBS_DIR)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only install, or SKINAPP_JOBS under a file
        raise JobError(f"the jobs folder {d} cannot be used ({exc.strerror or exc}); set SKINAPP_JOBS to a "
                       f"writable folder") from None
    return d


@contextmanager
def _lock(root: Path) -> Iterator[None]:
    with open(root / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot, /proc/PID/stat field 22): with the PID, it names one
    process, so a dead job whose PID the system gave to another process is not taken for running."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _job_alive(spec: dict[str, Any]) -> bool:
    pid, started = spec.get("pid"), spec.get("pid_start")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if started is not None and _start_time(pid) not in (None, started):
        return False  # the PID now belongs to another process
    return _pid_alive(pid)


def _write_json(path: Path, obj: Any) -> None:
    """Written whole or not at all: readers (the page, every few seconds) never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child we started is a zombie until reaped
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if isinstance(event, dict):
            events.append(event)
    return events


def _preparing(events: list[dict[str, Any]]) -> str:
    last = next((e for e in reversed(events) if e.get("event") in ("prepare", "cache")), None)
    if last is None:
        return "loading data"
    if last["event"] == "prepare":
        return f"{last.get('stage', 'preparing')}: {last.get('done', 0)} of {last.get('total', '?')}"
    if "view" in last:
        return f"teacher logits: augmented pass {last['view']} of {last['views']} done"
    return "loading the teacher's logits"


def job_state(job_dir: Path) -> JobState:
    try:
        spec = json.loads((job_dir / "job.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise JobError(f"job {job_dir.name} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.setdefault("args", {}), dict) \
            or not isinstance(spec.get("started"), (int, float)):
        raise JobError(f"job {job_dir.name} cannot be read (its job.json has no start time or odd arguments)")
    events = read_events(job_dir / "progress.jsonl")
    last = next((e for e in reversed(events) if e.get("event") in TERMINAL), None)
    steps = [e for e in events if e.get("event") == "step"]
    fraction = steps[-1]["fraction"] if steps else 0.0
    eta = steps[-1].get("eta_s") if steps else None
    model = None
    if last is None:
        if _job_alive(spec):
            status, message = "running", "training" if steps else _preparing(events)
        elif (job_dir / "stop").exists():
            status, message = "stopped", "cancelled; no model was registered"
        else:
            status, message = "failed", "the training process ended without reporting a result; see the log"
    elif last["event"] == "done":
        status, message, model, fraction, eta = "done", f"registered {last['name']}", last["name"], 1.0, 0.0
    elif last["event"] == "stopped":
        status, message = "stopped", "cancelled; no model was registered"
    else:
        status, message = "failed", last.get("message", "training failed")
    return JobState(job_dir.name, status, spec, events, float(fraction), eta, message, model, spec["started"])


def list_jobs(root: str | Path | None = None, limit: int | None = None) -> list[JobState]:
    """Readable jobs, newest first (at most ``limit``, read newest first by their time-stamped folder names: the
    page asks every 1.5 s, and 3000 old jobs took 5 s to read); a damaged one is logged and left out."""
    states = []
    for p in sorted(jobs_dir(root).iterdir(), reverse=True):
        if limit is not None and len(states) >= limit:
            break
        if (p / "job.json").exists():
            try:
                states.append(job_state(p))
            except JobError as exc:
                log.warning("%s", exc)
    return sorted(states, key=lambda s: s.started, reverse=True)


def check_run(args: dict[str, Any], weights_dir: str | None = None) -> None:
    """What the job would refuse in its log seconds after starting, refused before it starts: the same checks
    ``train`` makes first (``check_new_run``), on the config the job's command line would build."""
    from .distill import TrainConfig, check_new_run

    fields = {k: v for k, v in args.items() if k in TrainConfig.__dataclass_fields__}
    if args.get("no_kd"):
        fields["teacher"] = None
    check_new_run(TrainConfig(**fields, role="student", weights_dir=weights_dir), Registry(weights_dir))


def data_roots() -> list[Path]:
    """Folders under which the Train page may read datasets: ``SKINAPP_DATA_ROOTS`` (separated by the system's
    path separator), else the shared development data and a ``datasets/`` folder beside the app."""
    env = os.environ.get("SKINAPP_DATA_ROOTS", "").strip()
    if env:
        return [Path(p).expanduser().resolve() for p in env.split(os.pathsep) if p.strip()]
    here = Path(__file__).resolve().parents[1]
    return [(here.parent / "shared" / "data").resolve(), (here / "datasets").resolve()]


def allowed_data_folder(path: str | Path, roots: list[Path] | None = None) -> Path:
    """The folder, if it lies under one of the roots; otherwise one refusal that says the same whether or not the
    folder exists, so the page cannot be used to probe the server's file system."""
    roots = data_roots() if roots is None else roots
    if "\x00" in str(path):  # no file name holds one; Path.resolve would raise on it
        raise DatasetError(f"dataset folder {str(path)!r} holds a NUL character; no folder is named so")
    p = Path(str(path)).expanduser()
    resolved = p.resolve() if p.is_absolute() else (Path.cwd() / p).resolve()
    for root in roots:
        if resolved == root or root in resolved.parents:
            return resolved
    raise DatasetError(f"dataset folders must be inside {' or '.join(str(r) for r in roots)} "
                       f"(set SKINAPP_DATA_ROOTS to allow others); {str(path)!r} is not")


def active_job(root: str | Path | None = None) -> JobState | None:
    """The running job: one at a time, and none starts while one runs, so it is among the newest."""
    return next((s for s in list_jobs(root, limit=5) if s.status == "running"), None)


def build_command(args: dict[str, Any], weights_dir: str | None) -> list[str]:
    """CLI arguments for ``python -m skinapp distill``: the UI launches exactly what a user could type."""
    cmd = [sys.executable, "-m", "skinapp"]
    if weights_dir:
        cmd += ["--weights", str(weights_dir)]
    cmd.append("distill")
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        cmd += [flag] if value is True else [flag, str(value)]
    return cmd


def start_job(args: dict[str, Any], root: str | Path | None = None, weights_dir: str | None = None) -> JobState:
    """Launch a distillation subprocess; refuses while another job runs."""
    d = jobs_dir(root)
    Registry(weights_dir).recover()  # what a job killed while registering left behind
    with _lock(d):
        running = active_job(d)
        if running is not None:
            raise JobBusyError(f"job {running.id} ({running.spec['args'].get('name')}) is still running; "
                               f"wait for it or cancel it first")
        job_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        jd = d / job_id
        jd.mkdir()
        full = dict(args, progress=str(jd / "progress.jsonl"), stop_file=str(jd / "stop"))
        cmd = build_command(full, weights_dir)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(jd / "log.txt", "w") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        spec = {"id": job_id, "args": args, "cmd": cmd, "pid": proc.pid, "pid_start": _start_time(proc.pid),
                "started": time.time(), "weights_dir": weights_dir}
        _write_json(jd / "job.json", spec)
    return job_state(jd)


def cancel_job(job_id: str, root: str | Path | None = None) -> None:
    """Ask politely (stop file, checked every step); SIGTERM as well, which the trainer also handles cleanly."""
    jd = jobs_dir(root) / job_id
    if not (jd / "job.json").exists():
        raise JobError(f"no job {job_id!r}")
    spec = job_state(jd).spec
    if not _job_alive(spec):  # a job that already ended stays as it ended ("failed" is not "cancelled")
        return
    (jd / "stop").touch()
    try:
        os.kill(spec["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass


#: what the page shows of a job's log at most: its end, read from the file's end (the page reads it every 1.5 s)
LOG_TAIL_BYTES = 64 * 1024


def log_tail(job_id: str, root: str | Path | None = None, lines: int = 30) -> str:
    path = jobs_dir(root) / job_id / "log.txt"
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
        tail = f.read().decode(errors="replace")
    return "\n".join(line[-2000:] for line in tail.splitlines()[-lines:])  # one endless line is cut too


ESTIMATE_TIMEOUT_S = 600
_ESTIMATING = threading.Lock()  # one estimate at a time per server: each decodes the photos and loads a teacher


def estimate_run(args: dict[str, Any], weights_dir: str | None = None, timeout: float = ESTIMATE_TIMEOUT_S
                 ) -> dict[str, Any]:
    """How long the job ``args`` describes would take, from ``distill --estimate`` in a subprocess: it decodes the
    photos and loads the teacher as the job will, so the server's memory and threads stay out of it."""
    cmd = build_command(args, weights_dir) + ["--estimate", "--json"]
    if not _ESTIMATING.acquire(blocking=False):
        raise JobBusyError("another estimate is running on this server; try again when it has finished")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired as exc:
        raise JobError(f"the estimate took over {timeout:.0f} s; the run itself would be longer still") from exc
    finally:
        _ESTIMATING.release()
    if done.returncode != 0 or not done.stdout.strip():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise JobError(f"the estimate failed: {tail}")
    return json.loads(done.stdout)
