"""``distill --estimate``: the run's expected time, measured on this machine before it starts; nothing trained."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from skinapp.distill import TrainConfig, train
from skinapp.distill.estimate import estimate
from skinapp.distill.loop import batch_indices
from skinapp.registry import Registry

TINY = dict(arch="dsnet", epochs=2, lr=1e-3, batch_size=8, image_size=48, threads=1, pretrained="none")


@pytest.fixture
def reg(tiny_registry, tmp_path, monkeypatch) -> Registry:
    monkeypatch.setenv("SKINAPP_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tiny_registry, tmp_path / "weights")
    return Registry(tmp_path / "weights")


def test_estimate_scales_measured_costs_by_the_runs_size_and_registers_nothing(reg, tiny_data, tmp_path):
    cfg = TrainConfig(data=str(tiny_data), name="est", teacher="tiny-teacher", teacher_views=2, **TINY)
    before = reg.names()
    est = estimate(cfg, reg)
    steps = len(batch_indices(est.n_train, 8, 0, 0, 0, 1)) * 2
    assert est.steps == steps and 0 < est.n_train < 48  # the training split only, not every photo
    assert est.train_s == pytest.approx(steps * est.step_s, rel=0.01, abs=0.01)
    assert est.teacher_pass == "to compute" and est.teacher_image_s > 0
    assert est.teacher_s == pytest.approx(2 * est.n_train * est.teacher_image_s, rel=0.01, abs=0.01)
    assert est.total_s == pytest.approx(est.prepare_s + est.teacher_s + est.views_s + est.train_s + est.validate_s)
    assert reg.names() == before and not (tmp_path / "cache").exists()  # no model, no cache written
    assert est.summary().startswith("about ") and "teacher's pass" in est.summary()
    # once a run has made the cache for exactly these settings, the estimate knows the teacher's pass is done
    train(TrainConfig(**{**vars(cfg), "epochs": 1}), reg)
    again = estimate(cfg, reg)
    assert again.teacher_pass == "cached" and again.teacher_s == again.views_s == 0
    assert "already cached" in again.summary()
    # another seed makes other views: the pass is to do again
    assert estimate(TrainConfig(**{**vars(cfg), "seed": 1}), reg).teacher_pass == "to compute"


def test_estimate_of_a_live_teacher_and_of_no_teacher(reg, tiny_data):
    live = estimate(TrainConfig(data=str(tiny_data), name="e", teacher="tiny-teacher", kd="function-matching",
                                **TINY), reg)
    assert live.teacher_pass == "live at every step" and live.teacher_s == 0 and live.teacher_image_s > 0
    assert "teacher running at every step" in live.summary()
    alone = estimate(TrainConfig(data=str(tiny_data), name="e", **TINY), reg)
    assert alone.teacher_pass == "none" and alone.teacher_image_s is None and alone.teacher_s == 0


def test_a_feature_objective_cannot_use_shipped_logits(reg, tiny_data):
    """Shipped files hold logits only: an attention run's teacher pass is to compute even when they exist."""
    from skinapp.distill import SHIPPED_LOGITS
    from skinapp.distill.cache import cache_key
    from skinapp.distill.estimate import _cache_state
    from skinapp.distill.run import make_loop, prepare
    from skinapp.distill.progress import ProgressLog, StopRequest

    cfg = TrainConfig(data=str(tiny_data), name="e", teacher="tiny-teacher", **TINY)
    stop = StopRequest(None)
    try:
        p = prepare(cfg, reg, ProgressLog(None), stop)
        lp = make_loop(cfg, p, reg, ProgressLog(None), stop)
        key = cache_key(cfg, p.st, [p.decoded.hashes[i] for i in p.train_idx], p.size, lp.train_x.shape[-1],
                        own_size_views=lp.train_small is not None)
        assert _cache_state(cfg, p, lp, reg) == "to compute"
        (reg.root / SHIPPED_LOGITS).mkdir(exist_ok=True)
        (reg.root / SHIPPED_LOGITS / f"teacher-logits-{key}.safetensors").write_bytes(b"")
        assert _cache_state(cfg, p, lp, reg) == "shipped logits"
    finally:
        stop.restore()
    att = estimate(TrainConfig(**{**vars(cfg), "kd": "attention"}), reg)
    assert att.teacher_pass == "to compute"


def test_estimate_from_the_command_line_as_the_train_page_runs_it(reg, tiny_data, monkeypatch):
    from skinapp import jobs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = {"data": str(tiny_data), "name": "cli-est", "arch": "dsnet", "epochs": 1, "batch_size": 8,
            "image_size": 48, "teacher": "tiny-teacher", "threads": 1, "pretrained": "none"}
    out = jobs.estimate_run(args, weights_dir=str(reg.root))
    assert out["teacher_pass"] == "to compute" and out["total_s"] > 0 and out["summary"].startswith("about ")
    assert "cli-est" not in Registry(reg.root).names() and not jobs.list_jobs()
    with pytest.raises(jobs.JobError, match="the estimate failed: .*no such|the estimate failed: .*not"):
        jobs.estimate_run(args | {"data": str(Path(tiny_data) / "missing")}, weights_dir=str(reg.root))


def test_one_estimate_at_a_time(reg, tiny_data):
    from skinapp import jobs

    assert jobs._ESTIMATING.acquire(blocking=False)  # as if another session's estimate were running
    try:
        with pytest.raises(jobs.JobBusyError, match="another estimate is running"):
            jobs.estimate_run({"data": str(tiny_data), "name": "x"}, weights_dir=str(reg.root))
    finally:
        jobs._ESTIMATING.release()
