"""Background jobs: one at a time, cancellable, state read back from disk."""
from __future__ import annotations

import shutil
import time

import pytest

from skinapp import jobs
from skinapp.registry import Registry


def wait(pred, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.3)
    return False


@pytest.fixture()
def weights(tmp_path, tiny_registry):
    w = tmp_path / "weights"
    shutil.copytree(tiny_registry, w)
    return w


def test_second_job_refused_then_cancel_registers_nothing(tmp_path, tiny_data, weights):
    root = tmp_path / "jobs"
    args = {"data": str(tiny_data), "name": "long-one", "arch": "dsnet", "teacher": "tiny-teacher", "epochs": 200,
            "batch_size": 4, "image_size": 48, "threads": 1, "pretrained": "none"}
    first = jobs.start_job(args, root, str(weights))
    assert first.status == "running"
    with pytest.raises(jobs.JobBusyError, match=first.id):
        jobs.start_job(dict(args, name="other"), root, str(weights))
    assert wait(lambda: jobs.job_state(root / first.id).losses), jobs.log_tail(first.id, root)
    jobs.cancel_job(first.id, root)
    assert wait(lambda: jobs.job_state(root / first.id).status != "running")
    state = jobs.job_state(root / first.id)
    assert state.status == "stopped"
    assert "long-one" not in Registry(weights).names()
    assert not list(weights.glob("*.tmp")) and not list(weights.glob(".*.tmp"))
    # the history is on disk: a fresh reader (an app restart) sees the same job
    assert [s.id for s in jobs.list_jobs(root)] == [first.id]


def test_failed_job_reports_reason(tmp_path, weights):
    root = tmp_path / "jobs"
    state = jobs.start_job({"data": str(tmp_path / "missing"), "name": "x", "no_kd": True}, root, str(weights))
    assert wait(lambda: jobs.job_state(root / state.id).status != "running")
    state = jobs.job_state(root / state.id)
    assert state.status == "failed"
    assert "does not exist" in state.message or "does not exist" in jobs.log_tail(state.id, root)


def test_build_command_flags():
    cmd = jobs.build_command({"name": "a", "no_kd": True, "teacher": None, "batch_size": 8}, "/w")
    assert cmd[1:] == ["-m", "skinapp", "--weights", "/w", "distill", "--name", "a", "--no-kd", "--batch-size", "8"]


def test_a_running_job_says_how_far_the_teacher_cache_is(tmp_path):
    import json
    import os

    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text(json.dumps({"pid": os.getpid(), "started": 0.0}))
    progress = job / "progress.jsonl"
    progress.write_text("")
    assert jobs.job_state(job).message == "loading data"
    progress.write_text(json.dumps({"event": "cache", "view": 1, "views": 2}) + "\n")
    assert jobs.job_state(job).message == "teacher logits: augmented pass 1 of 2 done"
    progress.write_text(json.dumps({"event": "cache", "message": "teacher logits loaded", "views": 1}) + "\n")
    assert jobs.job_state(job).message == "loading the teacher's logits"


def test_allowed_data_folder_refuses_everything_outside_the_roots(tmp_path, monkeypatch):
    from skinapp.data import DatasetError
    from skinapp.jobs import allowed_data_folder, data_roots

    inside = tmp_path / "root" / "ds"
    inside.mkdir(parents=True)
    monkeypatch.setenv("SKINAPP_DATA_ROOTS", str(tmp_path / "root"))
    assert data_roots() == [(tmp_path / "root").resolve()]
    assert allowed_data_folder(inside) == inside.resolve()
    (tmp_path / "root" / "link").symlink_to("/etc")
    for bad in ("/", "/proc", str(tmp_path), str(inside / ".." / ".." / "x"), str(tmp_path / "root" / "link"),
                str(tmp_path / "root2")):
        with pytest.raises(DatasetError, match="must be inside") as info:
            allowed_data_folder(bad)
        assert "exist" not in str(info.value)
    monkeypatch.delenv("SKINAPP_DATA_ROOTS")
    assert [r.name for r in data_roots()] == ["data", "datasets"]


def test_a_dead_job_whose_pid_was_reused_is_not_running(tmp_path):
    """The PID alone is not a process: a job records its process's start time too."""
    import json
    import os

    job = tmp_path / "job"
    job.mkdir()
    me = os.getpid()
    (job / "job.json").write_text(json.dumps({"pid": me, "pid_start": jobs._start_time(me), "started": 0.0}))
    assert jobs.job_state(job).status == "running"
    (job / "job.json").write_text(json.dumps({"pid": me, "pid_start": jobs._start_time(me) - 1, "started": 0.0}))
    assert jobs.job_state(job).status == "failed"  # same PID, another process: the job is dead


def test_job_state_is_written_whole(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    writes = []
    real_replace = jobs.os.replace
    monkeypatch.setattr(jobs.os, "replace", lambda a, b: writes.append((Path(a).name, Path(b).name))
                        or real_replace(a, b))
    jobs._write_json(tmp_path / "job.json", {"pid": 1})
    assert writes == [(".job.json.%d.tmp" % jobs.os.getpid(), "job.json")]
    assert json.loads((tmp_path / "job.json").read_text()) == {"pid": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json"]


def test_preparation_has_its_own_progress_and_eta(tmp_path):
    import json
    import os

    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text(json.dumps({"pid": os.getpid(), "started": 0.0}))
    events = [{"event": "prepare", "stage": "decoding the photos", "done": 400, "total": 1600, "elapsed_s": 10.0}]
    (job / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    state = jobs.job_state(job)
    assert state.preparation == ("decoding the photos", 0.25, 30.0)
    assert state.message == "decoding the photos: 400 of 1600"
    events.append({"event": "prepare", "stage": "the teacher's pass", "done": 0, "total": 900, "elapsed_s": 0.1})
    (job / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert jobs.job_state(job).preparation == ("the teacher's pass", 0.0, None)  # no ETA from nothing done
    events.append({"event": "step", "epoch": 1, "epochs": 2, "step": 1, "steps": 5, "loss": 0.7, "fraction": 0.1})
    (job / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    state = jobs.job_state(job)
    assert state.preparation is None and state.message == "training" and state.fraction == 0.1


def test_decoding_reports_how_far_it_is(tiny_data):
    from skinapp.data import decode_dataset, scan_dataset

    ds = scan_dataset(tiny_data)
    said = []
    decode_dataset(ds, 32, report=said.append)
    assert said == list(range(0, len(ds.samples), 16)) + [len(ds.samples)]


def test_stage_events_are_throttled_but_the_last_always_comes(tmp_path):
    import json

    from skinapp.distill.progress import ProgressLog, Stage

    path = tmp_path / "p.jsonl"
    stage = Stage(ProgressLog(str(path)), "decoding the photos", 100, every_s=60)
    for n in range(0, 101, 10):
        stage.update(n)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["event"], e["done"], e["total"]) for e in events] == [("prepare", 100, 100)]


def _ended_job(root, name: str, progress: str = "") -> str:
    import json

    job = root / name
    job.mkdir(parents=True)
    (job / "job.json").write_text(json.dumps({"pid": 0, "pid_start": None, "started": 1.0, "args": {"name": name}}))
    (job / "progress.jsonl").write_text(progress)
    return name


def test_cancel_leaves_a_job_that_already_ended_as_it_ended(tmp_path):
    """A Cancel button drawn before the job died once turned "failed, see the log" into "cancelled"."""
    root = tmp_path / "jobs"
    job = _ended_job(root, "20261203-000000-aaa")
    assert jobs.job_state(root / job).status == "failed"
    jobs.cancel_job(job, root)
    assert jobs.job_state(root / job).status == "failed" and not (root / job / "stop").exists()


def test_the_log_tail_reads_only_the_end_of_a_huge_log(tmp_path):
    root = tmp_path / "jobs"
    job = _ended_job(root, "20261203-000000-bbb")
    (root / job / "log.txt").write_bytes(b"x" * 5_000_000 + b"\nlast line\n")  # one endless line, then the end
    tail = jobs.log_tail(job, root)
    assert tail.endswith("last line") and len(tail) <= 2000 + 1 + len("last line")


def test_the_history_reads_the_newest_jobs_only(tmp_path):
    root = tmp_path / "jobs"
    for i in range(12):
        _ended_job(root, f"20261203-0000{i:02d}-job")
    (root / "20261203-000005-job" / "job.json").write_text("{cut")  # a damaged one is skipped, not counted
    newest = [s.id for s in jobs.list_jobs(root, limit=3)]
    assert sorted(newest) == ["20261203-000009-job", "20261203-000010-job", "20261203-000011-job"]
    assert len(jobs.list_jobs(root)) == 11


def test_a_jobs_folder_that_cannot_be_made_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(jobs.JobError, match="set SKINAPP_JOBS to a writable folder"):
        jobs.jobs_dir(blocker / "jobs")
