"""Train: validate a dataset folder, launch distillation in a background process, follow it, cancel it."""
from __future__ import annotations

import os
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from skinapp import jobs
from skinapp.data import DatasetError, LesionDataset, resize_square, scan_dataset
from skinapp.distill import DEFAULT_STUDENT_ARCH, TrainingError, default, option
from skinapp.distill.objectives import CHOICES, KD_OBJECTIVES, needs_features, parse_kd
from skinapp.distill.teacher import init_prefix, plan_heads
from skinapp.imageio import InvalidImageError, load_image
from skinapp.models import ARCHITECTURES
from skinapp.studies import load_study, measured
from skinapp.registry import RegistryError
from skinapp.ui import common

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "isic9"


@st.cache_data(show_spinner=False, ttl=30)
def _scan(path: str):
    ds = scan_dataset(path)
    thumbs, seen = [], set()
    for s in ds.samples:  # one example per diagnosis folder
        if s.diagnosis in seen or len(thumbs) >= 9:
            continue
        try:
            thumbs.append((s.diagnosis, resize_square(load_image(s.path), 112)))
            seen.add(s.diagnosis)
        except InvalidImageError:
            continue
    return ds.counts(), ds.class_counts(), ds.groups, thumbs, _metadata_info(ds)


def _metadata_info(ds) -> tuple[str, int, str] | None:
    """(table path, images it gives a lesion id, id column), or None: plain data, so st.cache_data can keep it."""
    meta = ds.metadata
    if meta is None:
        return None
    return str(meta.path), sum(1 for p in meta.rows if meta.lesion_id(p)), meta.id_column


def _metadata_note(path: str, info: tuple[str, int, str] | None, n_images: int) -> None:
    if info is None:
        folder = Path(path).expanduser().name
        st.warning(f"No metadata table was found (metadata.csv with image and lesion_id columns, inside the folder "
                   f"or {folder}-metadata.csv beside it), so photos of the same lesion are grouped only when they "
                   f"are near-duplicates and the test numbers may be optimistic.", icon=":material/warning:")
        return
    table, n_with_id, column = info
    st.caption(f"Lesion metadata: {table} gives {n_with_id} of {n_images} images a {column}; photos of one lesion "
               f"stay on one side of the split.")


def _dataset_preview(path: str) -> bool:
    try:
        counts, classes, groups, thumbs, meta = _scan(str(jobs.allowed_data_folder(path)))
    except DatasetError as exc:
        st.error(common.md(common.friendly(exc)), icon=":material/folder_off:")
        return False
    st.success(" · ".join(f"{k}: {v}" for k, v in classes.items()) + f" — {sum(counts.values())} images")
    _metadata_note(path, meta, sum(counts.values()))
    st.plotly_chart(_counts_chart(counts, groups), width="stretch", key="train_counts")
    if thumbs:
        order = {d: i for i, d in enumerate(_chart_order(counts, groups))}
        cols = st.columns(max(len(thumbs), 6))  # at least six, so a few thumbnails stay small
        for col, (dx, img) in zip(cols, sorted(thumbs, key=lambda t: order.get(t[0], len(order)))):
            col.image(img, caption=_thumb_label(dx, groups), width="stretch")
    return True


def _thumb_label(folder: str, groups: dict[str, str]) -> str:
    """A folder's name and what it counts as, said once when they are the same word ('Benign/' is benign)."""
    label = groups.get(folder, folder)
    return folder.replace("_", " ") + ("" if label.casefold() == folder.casefold() else f" ({label})")


def _chart_order(counts: dict[str, int], groups: dict[str, str]) -> list[str]:
    """Folders grouped by the label they count as, as the chart draws them and the thumbnails follow."""
    return [d for label in dict.fromkeys(groups[d] for d in counts) for d in counts if groups[d] == label]


def _counts_chart(counts: dict[str, int], groups: dict[str, str]) -> go.Figure:
    """Images per folder, one colour (and legend entry) per task label."""
    fig = go.Figure()
    for label in dict.fromkeys(groups[d] for d in counts):
        folders = [d for d in _chart_order(counts, groups) if groups[d] == label]
        positive = label in ("malignant", "melanoma")
        fig.add_bar(x=[d.replace("_", " ") for d in folders], y=[counts[d] for d in folders], name=label,
                    marker_color=common.POSITIVE_COLOUR if positive else common.NEGATIVE_COLOUR)
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="images",
                      xaxis_title="folder (diagnosis)", legend_title_text="counts as", barmode="stack")
    return fig


def _bounds(name: str) -> tuple:
    o = option(name)
    return (o.type(o.lo), o.type(o.hi))


def _number(col, label: str, name: str, arch: str, value=None, **kw):
    """A number input whose default, limits and help come from the engine's TrainConfig (one source)."""
    lo, hi = _bounds(name)
    value = default(name, "student", arch) if value is None else value
    kw.setdefault("help", option(name).help)
    return col.number_input(label, lo, hi, option(name).type(value), key=f"train_{name}_{arch}", **kw)


def _default_name(arch: str, archs: list[str]) -> None:
    """my-<architecture> until the user types a name of their own, which then survives a change of architecture
    (it was reset to the new default)."""
    defaults = {f"my-{a.replace('_', '-')}" for a in archs}
    if st.session_state.get("train_name") in defaults | {None}:
        st.session_state["train_name"] = f"my-{arch.replace('_', '-')}"


def _form(reg) -> tuple[dict, str] | None:
    """The run's arguments and what was pressed ("estimate" or "launch"), or None before a press."""
    teachers = [c.name for c in reg.cards() if c.role == "teacher"]
    students = sorted(a for a, spec in ARCHITECTURES.items() if spec.family != "fused")  # fused = teachers only
    # outside the form, so picking an architecture refills the schedule below with that architecture's own
    arch = st.selectbox("Student architecture", students, index=students.index(DEFAULT_STUDENT_ARCH), key="train_arch",
                        help="lite0_tiny: the default student's network (ImageNet-initialised); dsnet: the paper's")
    kd = _objective()
    _default_name(arch, students)
    # outside the form, so a typed name is known to the page when the architecture changes (a form's values
    # reach it only on submit)
    name = st.text_input("New model name", key="train_name", max_chars=100,
                         help="Letters, digits, '-', '_' or '.'; the model is registered under it.")
    with st.form("train_form"):
        c1, c2, c3 = st.columns(3)
        options = teachers + ["(none: train without distillation)"]
        teacher = c1.selectbox("Teacher", options, key="train_teacher",
                               index=teachers.index(reg.default("teacher").name) if teachers else 0)
        init = c1.checkbox("Start from the teacher's layers", key="train_init",
                           help=option("init_from_teacher").help + ". Possible when the teacher holds the "
                                "layers of this network (lite0_tiny from an EfficientNet-Lite0 teacher).")
        temperature = _number(c2, "Distillation temperature T", "temperature", arch, step=0.5)
        alpha = c2.slider("alpha (weight of the hard-label loss)", *_bounds("alpha"), default("alpha"), 0.05,
                          help=option("alpha").help)
        knobs = {k: _number(c2, option(k).label.capitalize(), k, arch) for n in parse_kd(kd)
                 for k in KD_OBJECTIVES[n].knobs}
        epochs = _number(c2, "Epochs", "epochs", arch)
        lr = _number(c3, "Learning rate", "lr", arch, format="%.5f")
        batch = _number(c3, "Batch size", "batch_size", arch)
        size = _number(c3, "Image size (pixels)", "image_size", arch, value=ARCHITECTURES[arch].input_size)
        test_frac = _number(c1, "Locked test fraction", "test_frac", arch, step=0.05,
                            help="Share of lesions kept aside as the locked test split: reported only, never used "
                                 "to choose anything. 0 = no test split.")
        b1, b2, _ = st.columns([1, 1, 4])
        launch = b1.form_submit_button("Launch training", type="primary")
        timed = b2.form_submit_button("Estimate time", help="Prepares the data and the teacher as the job will "
                                      "and times a few real training steps on this server (under a minute on "
                                      "the default data); nothing is trained.")
    if not (launch or timed):
        return None
    args = {"data": st.session_state.get("train_data", ""), "name": name.strip(), "arch": arch,
            "temperature": temperature, "alpha": alpha, "epochs": int(epochs), "lr": lr, "batch_size": int(batch),
            "image_size": int(size), "test_frac": float(test_frac), "threads": max(1, (os.cpu_count() or 2))}
    if teacher in teachers:
        args |= {"teacher": teacher, "kd": kd} | knobs
    else:
        args["no_kd"] = True
    if init:
        chosen = reg.get(teacher) if teacher in teachers else None
        if chosen is None or init_prefix(chosen, arch) is None:
            st.error(f"{arch} cannot start from {teacher}'s layers: pick a teacher that holds them "
                     f"(an EfficientNet-Lite0 teacher, or a fused teacher with a Lite0 member, for lite0_tiny).")
            return None
        args["init_from_teacher"] = teacher
    return args, "launch" if launch else "estimate"


def _teacher_problem(reg, args: dict, path: str) -> str | None:
    """Why the chosen teacher cannot teach this folder (read from its card and the folder's listing), or None."""
    if not args.get("teacher"):
        return None
    counts, _, groups, _, _ = _scan(str(jobs.allowed_data_folder(path)))
    ds = LesionDataset(Path(path), "malignant", [], tuple(sorted(counts)), dict(groups))
    try:
        plan_heads("auto", "malignant", ds, reg.get(args["teacher"]))
    except TrainingError as exc:
        return str(exc)
    return None


def _objective() -> str:
    """The distillation objective, outside the form so its knobs appear as soon as it is picked."""
    kd = st.selectbox("Distillation objective", CHOICES, key="train_kd",
                      help="What the student learns from the teacher besides the labels.")
    parts = parse_kd(kd)
    st.caption(" · ".join(f"**{n}**: {KD_OBJECTIVES[n].summary} ({KD_OBJECTIVES[n].reference})" for n in parts))
    if "function-matching" in parts:
        st.info("Function matching runs the teacher at every training step (each batch is mixed anew) instead of "
                "once on cached views, so it takes several times longer than the logit objective on this CPU. "
                "**Estimate time** below says how long on this server before you launch.")
    elif needs_features(parts):
        st.info("Feature objectives need the teacher's feature maps, which no shipped file holds: unless an "
                "earlier run cached them, the teacher first runs over every training view. **Estimate time** "
                "below says how long on this server before you launch.")
    study = load_study()
    lines = [line for n in parts for line in measured(study, n)]
    if lines:
        teachers = ", ".join(sorted({s["teacher"] for s in study if s["teacher"]}))
        st.caption(f"Measured in this project against the same network trained without distillation (distilled from "
                   f"{teachers}, locked test split; a seed is better or worse when its 95% interval clears "
                   "zero): " + "; ".join(lines) + ". The Models page has the whole table.")
    return kd


def _estimate(args: dict, reg) -> None:
    """Time the run on this server before it is launched (a subprocess; the page waits for it)."""
    busy = jobs.active_job()
    with st.spinner("Preparing the data and the teacher and timing a few training steps on this server..."):
        try:
            args = dict(args, data=str(jobs.allowed_data_folder(args["data"])))
            est = jobs.estimate_run(args, weights_dir=str(reg.root))
        except (jobs.JobError, DatasetError) as exc:
            st.error(common.md(common.friendly(exc)), icon=":material/timer_off:")
            return
    st.info(f"Expected time: {common.md(est['summary'])}."
            + (" A job is running now, so these times include its load." if busy else ""), icon=":material/timer:")


def _job_panel(job_id: str, own: bool) -> bool:
    """The job's status, bar, curves and, for the session that launched it, its log and Cancel; then the job
    history. True while it runs. Another session's job shows only how far it is: its log may name the launcher's
    folders, and a Cancel there would stop someone else's run."""
    try:
        state = jobs.job_state(jobs.jobs_dir() / job_id)
    except jobs.JobError as exc:  # its folder damaged or removed while this page followed it
        st.warning(common.md(common.friendly(exc)), icon=":material/report:")
        _history()
        return False
    st.markdown(f"**Job {state.id}** — {common.md(state.spec['args'].get('name', ''))}: {state.status} "
                f"({common.md(state.message)})" + ("" if own else " · started in another session"))
    st.progress(*_bar(state))
    c1, c2 = st.columns(2)
    if state.losses:
        c1.plotly_chart(_loss_chart(state.losses), width="stretch", key=f"loss_{job_id}")
    if state.history:
        c2.plotly_chart(_auc_chart(state.history), width="stretch", key=f"auc_{job_id}")
    if state.status == "running" and own:
        if st.button("Cancel", key=f"cancel_{job_id}"):
            jobs.cancel_job(job_id)
            st.info("Stop requested; the job ends after its current step.")
    elif state.status == "running":
        st.caption("One job runs at a time on this server; only the session that launched it can cancel it.")
    elif state.status == "done":
        st.success(f"Model {state.model} is registered and selectable in Analyse and Compare.")
    elif state.status == "failed":
        st.error(f"Training failed: {common.md(state.message)}")
    if own:
        with st.expander("Log", expanded=state.status == "failed"):
            st.code(jobs.log_tail(job_id) or "(empty)")
    _history()
    return state.status == "running"


@st.fragment(run_every=1.5)
def _follow(job_id: str, own: bool) -> None:
    """The panel, refreshed while the job runs; once it has ended, the page is drawn once more and stops asking."""
    if not _job_panel(job_id, own):
        st.rerun()


def _running(job_id: str) -> bool:
    try:
        return jobs.job_state(jobs.jobs_dir() / job_id).status == "running"
    except jobs.JobError:
        return False


def _bar(state) -> tuple[float, str]:
    """Preparation (decoding, the teacher's pass) has its own bar and ETA; training's bar stops at 99% until
    the model is registered, so 100% always means done."""
    prep = state.preparation
    if prep is not None:
        stage, fraction, eta = prep
        left = f", about {eta:.0f} s left" if eta is not None and fraction < 1 else ""
        return min(fraction, 0.99), f"Preparing — {stage}: {fraction:.0%}{left}"
    if state.status == "done":
        return 1.0, "100% — done"
    fraction = min(state.fraction, 0.99)
    left = f", about {state.eta_s:.0f} s left" if state.eta_s and state.status == "running" else ""
    return fraction, f"Training: {fraction:.0%}{left}" if state.status == "running" else f"{fraction:.0%}"


def _loss_chart(steps: list[dict]) -> go.Figure:
    x = [e["epoch"] - 1 + e["step"] / e["steps"] for e in steps]
    fig = go.Figure(go.Scatter(x=x, y=[e["loss"] for e in steps], mode="lines", name="training loss"))
    fig.update_layout(height=240, margin=dict(l=10, r=10, t=30, b=10), title="Training loss",
                      xaxis_title="epoch", yaxis_title="loss (on the batch)", xaxis=dict(rangemode="tozero"))
    return fig


def _auc_chart(history: list[dict]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[e["epoch"] for e in history], y=[e["val_auc"] for e in history],
                               mode="lines+markers", name="validation AUC"))
    fig.update_layout(height=240, margin=dict(l=10, r=10, t=30, b=10), title="Validation AUC",
                      xaxis_title="epoch", yaxis_title="AUC", yaxis=dict(range=[0, 1.02]),
                      xaxis=dict(dtick=1 if len(history) <= 20 else None, rangemode="tozero"))
    return fig


#: jobs the history shows (and reads): the newest
HISTORY_SHOWN = 50


def _history() -> None:
    history = jobs.list_jobs(limit=HISTORY_SHOWN)
    if history:
        with st.expander(f"Job history ({len(history)}{' newest' if len(history) == HISTORY_SHOWN else ''})"):
            st.dataframe([{"job": h.id, "model": h.spec["args"].get("name"), "status": h.status,
                           "message": h.message} for h in history], width="stretch", hide_index=True)


def _launch(args: dict, reg, path: str) -> None:
    """Start the job, after the checks it would otherwise fail in its log a few seconds later."""
    try:
        args["data"] = str(jobs.allowed_data_folder(path))
        jobs.check_run(args, weights_dir=str(reg.root))
    except (jobs.JobError, TrainingError, RegistryError, DatasetError) as exc:
        st.error(f"{common.md(common.friendly(exc).rstrip('.'))}. No job was started.", icon=":material/block:")
        return
    try:
        st.session_state["train_job"] = jobs.start_job(args, weights_dir=str(reg.root)).id
    except jobs.JobBusyError as exc:
        st.warning(common.md(str(exc)))


def _default_data() -> str:
    """The shared development data, when it is there and inside the allowed roots (else the field starts empty
    rather than with a refusal the user did not ask for)."""
    try:
        return str(jobs.allowed_data_folder(DEFAULT_DATA)) if DEFAULT_DATA.exists() else ""
    except DatasetError:
        return ""


def render() -> None:
    st.title("Train a student by distillation")
    reg = common.registry()
    path = st.text_input("Dataset folder on this server", value=_default_data(),
                         key="train_data", placeholder=f"e.g. {jobs.data_roots()[-1] / 'my-lesions'}", help="benign/ + malignant/ subfolders, or one subfolder per diagnosis, inside "
                         + " or ".join(str(r) for r in jobs.data_roots()))
    valid = bool(path.strip()) and _dataset_preview(path.strip())
    pressed = _form(reg)
    if pressed is not None:
        args, action = pressed
        if not valid:
            st.error("Fix the dataset folder first: no job was started.")
        elif (problem := _teacher_problem(reg, args, path.strip())) is not None:
            st.error(f"This teacher cannot teach this folder: {problem}. No job was started.")
        elif action == "estimate":
            _estimate(args, reg)
        else:
            _launch(args, reg, path.strip())
    try:
        history = jobs.list_jobs(limit=1)
    except jobs.JobError as exc:  # the jobs folder cannot be made or written: the rest of the page still works
        st.error(f"Training jobs are unavailable on this server: {common.md(common.friendly(exc))}",
                 icon=":material/block:")
        return
    own = st.session_state.get("train_job")
    other = history[0].id if history and history[0].status == "running" else None  # the server is busy: say so
    current = own or other
    if current:
        (_follow if _running(current) else _job_panel)(current, own=current == own)
    else:
        _history()
