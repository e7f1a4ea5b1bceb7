"""What every page shares: cached models, the disclaimer, model labels, friendly errors.

Models are loaded once per process (``st.cache_resource``) keyed by name *and* weights sha256, so a model
re-registered under the same name is reloaded, and a new one is selectable without a restart.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import re
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
import numpy as np
import streamlit as st
import torch

from skinapp.data import resize_square
from skinapp.decision import (UNCERTAIN, OperatingPoint, auc_text, negative_caveat,  # noqa: F401 (pages use them)
                              operating_point, plain_rates, uncertain_caveat, verdict)
from skinapp.evaluation import grouped_probs
from skinapp.explain import explain, legend, load_cam_library, overlay
from skinapp.imageio import display_copy, load_image, one_line
from skinapp.inference import Predictor
from skinapp.registry import ModelCard, Registry, RegistryError

log = logging.getLogger(__name__)

DISCLAIMER = ("**Research and education tool — not a medical device, not for diagnosis.** Outputs are model "
              "estimates on photos and must not guide care. See a clinician for any concern about a skin lesion.")
UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "dcm", "dicom"]
FORMATS_TEXT = "JPEG, PNG, BMP, TIFF, WEBP or DICOM colour photographs"


def training_enabled() -> bool:
    """SKINAPP_TRAINING=off (or 0/false/no) hides the Train page, so a demo cannot launch jobs."""
    return os.environ.get("SKINAPP_TRAINING", "on").strip().lower() not in ("off", "0", "false", "no")


def disclaimer() -> None:
    st.warning(DISCLAIMER, icon=":material/medical_information:")


def registry() -> Registry:
    return Registry()


@st.cache_resource(show_spinner="Loading model…", max_entries=16)
def _load(name: str, sha256: str, root: str) -> Predictor:
    """Every page that loads a model draws its activation maps, and the first map of a server pays for imports:
    the map library (1.2 s) and, for an ONNX copy, the PyTorch source its maps run on (4-5 s with timm). Both are
    done in the background, so the page is ready while the user picks photos and the first photo does not wait;
    a copy whose source is not registered is refused here, by name."""
    with _MAP_IMPORTS:  # not while another model's background preparation imports timm or the map library
        pred = Predictor.from_registry(name, Registry(root))
    if pred.onnx:
        pred.cam_source()
    threading.Thread(target=_preload_maps, args=(pred,), name=f"skinapp-maps-{name}", daemon=True).start()
    return pred


def _preload_maps(pred: Predictor) -> None:
    try:
        maps_ready(pred)
    except Exception:  # asked again, with its message, when a photo's map is drawn
        log.warning("could not preload what the activation maps of %s need", pred.card.name, exc_info=True)


#: one thread at a time builds a model or prepares what maps need: two importing timm and the map library at
#: once left torchvision half imported once ("cannot import name 'InterpolationMode' from partially initialized
#: module"); a page's model load, the background preparation and a map all take it
_MAP_IMPORTS = threading.Lock()


def maps_ready(pred: Predictor) -> None:
    """Wait until what ``_load`` prepares in the background is there (or do it): a page that times models waits
    (``usable(card, maps=True)``), so the imports cannot fall inside the timed runs; a map waits too (``_map``)."""
    with _MAP_IMPORTS:
        pred.cam_model()
        load_cam_library(pred.card.cam_method)


def broken_models_note() -> None:
    """Name every unusable card file once, with its reason; the other models keep working."""
    broken = registry().broken()
    if broken:
        st.warning("Some model files cannot be used and are left out: " + "; ".join(
            f"`{b.file}`: {b.reason}" for b in broken), icon=":material/report:")


def usable(card: ModelCard, maps: bool = False) -> bool:
    """Load the model once; if its files are tampered with or broken, say so once instead of per photo.
    ``maps``: also wait for what its activation maps need (``maps_ready``), as a page that times models must."""
    try:
        pred = predictor(card)
        if maps:
            maps_ready(pred)
        return True
    except RegistryError as exc:
        st.error(f"Model {card.name} cannot be used: {friendly(exc)}", icon=":material/error:")
        return False


def predictor(card: ModelCard) -> Predictor:
    reg = registry()
    return _load(card.name, card.sha256, str(reg.root))


MODEL_HELP = ("★: the default model of its role. Test AUC: how well the model ranks malignant photos above benign "
              "ones on its locked test split (0.5 = chance, 1 = perfect), with its 95% interval.")


def model_label(card: ModelCard) -> str:
    default = " ★" if card.default else ""
    runtime = f", ONNX Runtime {card.precision}" if card.runtime == "onnx" else ""
    return (f"{card.name}{default} — {card.role}{runtime}, {card.params / 1e6:.2f} M params, "
            f"{card.file_bytes / 1e6:.1f} MB, {auc_text(card)}")


def human_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


@dataclass(frozen=True)
class Prediction:
    logits: np.ndarray
    latency_ms: float


@dataclass(frozen=True)
class ActivationMap:
    heatmap: np.ndarray
    target: str
    cam_ms: float


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Upload:
    """One uploaded file, decoded at most once however many steps need it in a page run; the caches key it by
    ``digest`` (the bytes never reach a cache key, a log or the disk)."""

    def __init__(self, data: bytes, filename: str):
        self.data, self.filename, self.digest = data, filename, file_digest(data)

    @functools.cached_property
    def image(self):
        return load_image(self.data, name=self.filename)

    def release(self) -> None:
        """Drop the full-size decode (a 7000 px photo holds 150 MB): a page analysing many photos keeps at most
        one alive; a step that needs it again decodes again."""
        self.__dict__.pop("image", None)


@st.cache_data(show_spinner=False, max_entries=128)
def _predict(name: str, sha256: str, root: str, digest: str, _photo: Upload) -> Prediction:
    """Once per (model, photo): temperature and threshold changes are then free. In memory only (no persist)."""
    pred = _load(name, sha256, root)
    img = _photo.image
    t0 = time.perf_counter()
    logits = pred.logits(pred.preprocess(img))[0].numpy()
    return Prediction(logits, (time.perf_counter() - t0) * 1000)


@st.cache_data(show_spinner=False, max_entries=128)
def _map(name: str, sha256: str, root: str, digest: str, target: str, _photo: Upload) -> ActivationMap:
    pred = _load(name, sha256, root)
    maps_ready(pred)  # not alongside another model's background imports
    cam = explain(pred, _photo.image, target)
    return ActivationMap(cam.heatmap, cam.target, cam.latency_ms)


def predict(card: ModelCard, photo: Upload) -> Prediction:
    """The model's logits, without the activation map: a page can show the verdict before the map (1.9 s on the
    fused teacher, against 0.23 s for the verdict)."""
    return _predict(card.name, card.sha256, str(registry().root), photo.digest, photo)


def shown_label(card: ModelCard, p: float, threshold: float) -> str:
    """The label a page shows for P(positive) ``p``: the side of ``threshold`` it falls on."""
    return card.task_labels[1] if p >= threshold else card.task_labels[0]


def activation_map(card: ModelCard, photo: Upload, target: str) -> ActivationMap:
    """The map of ``target``, the label the page shows (``shown_label``), once per (model, photo, label)."""
    return _map(card.name, card.sha256, str(registry().root), photo.digest, target, photo)


def map_slot(where):
    """Room in ``where`` for an activation map drawn after the verdicts, saying so until then."""
    slot = where.empty()
    slot.caption(":material/hourglass_empty: The activation map follows.")
    return slot


def draw_map(slot, card: ModelCard, photo: Upload, target: str) -> ActivationMap | None:
    """The map of ``target``, computed under a spinner in ``slot``; None once ``slot`` says why it could not be
    drawn (the verdict beside it stands)."""
    try:
        with slot.container(), st.spinner("Drawing the activation map…", show_time=True):
            return activation_map(card, photo, target)
    except Exception as exc:
        log.exception("activation map of %s failed", card.name)
        slot.error(f"The activation map could not be drawn: {md(friendly(exc))}", icon=":material/error:")
        return None


#: decoded photos a session keeps (display copies, at most 1024 px a side): past this, the oldest are dropped
SESSION_IMAGE_BYTES = 64 * 2**20


def _decoded(photo: Upload) -> tuple:
    """The upload decoded once per session and kept only as two small copies: what the page shows
    (``display_copy``) and the centre square the models see (for the Grad-CAM overlay). In this session's memory
    (never another's, never on disk); least recently used dropped first past ``SESSION_IMAGE_BYTES``."""
    store: OrderedDict = st.session_state.setdefault("_decoded_uploads", OrderedDict())
    key = photo.digest
    if key in store:
        store.move_to_end(key)
        return store[key]
    img = photo.image
    store[key] = (display_copy(img), resize_square(img, min(512, *img.size)))
    while len(store) > 1 and sum(i.width * i.height * 3 for pair in store.values() for i in pair) > SESSION_IMAGE_BYTES:
        store.popitem(last=False)
    return store[key]


def decode(photo: Upload):
    """The photo as the page shows it."""
    return _decoded(photo)[0]


def p_positive(card: ModelCard, logits: np.ndarray, temperature: float) -> float:
    return float(grouped_probs(torch.from_numpy(np.asarray(logits))[None], card.positive_indices, temperature)[0])


THRESHOLD_HELP = ("A photo whose P({pos}) is at or above the threshold leans {pos}; within the 'uncertain' band "
                  "around it, the page says it is too close to call. Kept when you switch page.")


BAND_HELP = ("A photo whose P({pos}) is this close to the threshold, on either side, is called 'Uncertain' instead "
             "of leaning one way: the model cannot tell it apart from the threshold reliably.")


def decision_sliders(thr_col, band_col, card: ModelCard, key: str) -> tuple[float, float]:
    """The threshold and 'uncertain' band every page uses, remembered across pages (and models) in this
    session, so Analyse and Compare call a photo the same way."""
    last = st.session_state.get("_decision", {"threshold": 0.5, "band": 0.1})
    pos = card.task_labels[1]
    threshold = thr_col.slider(f"Decision threshold on P({pos})", 0.05, 0.95, last["threshold"], 0.01,
                               key=f"{key}_thr", help=THRESHOLD_HELP.format(pos=pos))
    band = band_col.slider("'Uncertain' band around the threshold (±)", 0.0, 0.3, last["band"], 0.01,
                           key=f"{key}_band", help=BAND_HELP.format(pos=pos))
    band_col.caption(f"Uncertain when P({pos}) is between {max(0.0, threshold - band):.2f} and "
                     f"{min(1.0, threshold + band):.2f}." if band else "No uncertain band: every photo leans one way.")
    st.session_state["_decision"] = {"threshold": threshold, "band": band}
    return threshold, band


NEGATIVE_COLOUR, POSITIVE_COLOUR = "#2f6690", "#c0392b"


def prob_chart(card: ModelCard, p: float):
    import plotly.graph_objects as go

    neg, pos = card.task_labels
    values = [1 - p, p]
    # blue, not green, for the negative side (green reads as all clear); labels stay level, outside a thin bar
    fig = go.Figure(go.Bar(x=values, y=[neg, pos], orientation="h", marker_color=[NEGATIVE_COLOUR, POSITIVE_COLOUR],
                           text=[f"{v:.1%}" for v in values], textangle=0, cliponaxis=False,
                           textposition=["inside" if v >= 0.2 else "outside" for v in values]))
    fig.update_layout(height=140, margin=dict(l=10, r=24, t=10, b=10), showlegend=False,  # room for "100%"
                      xaxis=dict(range=[0, 1.0001], tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".0%"))
    return fig


SPLIT_NAMES = {"test": "Locked test split (n={n})",
               "validation": "Validation split (n={n}; this model has no locked test split, so this is optimistic)"}


def operating_caption(card: ModelCard, threshold: float, temperature: float) -> str | None:
    """The model's sensitivity and specificity at this threshold and temperature, in figures and in words
    (Analyse under its threshold, Compare under each model: two models can agree on a photo and still miss
    different shares of malignant ones)."""
    op = operating_point(card, threshold, temperature)
    if op is None:
        return None
    where = SPLIT_NAMES[op.split].format(n=op.n if op.n is not None else "?")
    return (f"{where}: sensitivity {op.sensitivity:.0%}, specificity {op.specificity:.0%} at this threshold "
            f"and temperature: {plain_rates(op, card.task_labels)}.")


def verdict_heading(where, card: ModelCard, p: float, threshold: float, band: float, temperature: float,
                    level: str = "####") -> str:
    """The verdict as a heading in ``where`` and, under a negative lean or an uncertain one, what it does not
    rule out (Analyse and Compare word it the same way); the headline."""
    headline, colour = verdict(card, p, threshold, band)
    where.markdown(f"{level} :{colour}[{headline}]")
    if headline == f"Leans {card.task_labels[0]}":
        where.caption(negative_caveat(card, threshold, temperature, band))
    elif headline == UNCERTAIN:
        where.caption(uncertain_caveat(card))
    return headline


def cam_legend() -> np.ndarray:
    """The overlay's colour bar (viridis: low contribution on the left, high on the right)."""
    return legend(256, 10)


def cam_overlay(photo: Upload, heatmap: np.ndarray, alpha: float) -> np.ndarray:
    return overlay(_decoded(photo)[1], heatmap, alpha)  # the square the model saw, not the letterbox


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>~|$])")


def md(text: str) -> str:
    """Text from a user (a file name, a typed path) as plain text inside Markdown: no live link (bracketed or
    bare), emphasis or HTML, and control characters (a newline in a file name) shown as escapes on one line."""
    escaped = _MD_SPECIAL.sub(r"\\\1", one_line(text))
    return re.sub(r"(?i)(www)\.", r"\1\\.", escaped.replace("://", "\\://"))


CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(df):
    """A table for download: text cells a spreadsheet would run as a formula (=, +, -, @ first) get a leading
    apostrophe (OWASP's advice for CSV injection); numbers are left alone."""
    out = df.copy()
    for col in out.columns:
        out[col] = [f"'{v}" if isinstance(v, str) and v.startswith(CSV_TRIGGERS) else v for v in out[col]]
    return out


def friendly(exc: Exception) -> str:
    """Any error a page can meet as one line: the whole message, control characters (a newline in a typed path)
    shown as escapes, so nothing after one is lost; cut at 600 characters."""
    text = one_line(str(exc).strip())
    return (text[:600] + "…" if len(text) > 600 else text) or "Something went wrong with this request."
