"""DICOM colour photographs (VL Photographic, Dermoscopic Photography, colour Secondary Capture) as RGB pictures.

Only the pixels leave this module. No tag is returned, logged or put into a message except the few that say
what kind of image a file is (SOP class, modality, photometric interpretation): never a patient's name, ID,
birth date or any other identifying value, so nothing downstream (pages, CSV, PDF, logs) can show one.
"""
from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: SOP classes that hold colour photographs of the skin (DICOM PS3.4): the dermoscopic one, general visible-light
#: photography, and (single and multi-frame) secondary capture, which some cameras and PACS exports use
PHOTO_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.7": "Dermoscopic Photography",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture",
}
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
ACCEPTED = "VL Photographic, Dermoscopic Photography or Secondary Capture colour images"


class DicomError(ValueError):
    """The file is DICOM but not a colour photograph skinapp can read; the message names what it is instead."""


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then 'DICM'."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _kind(ds) -> str:
    """What the file is, in words, from non-identifying tags only."""
    sop = str(ds.get("SOPClassUID", ""))
    name = PHOTO_CLASSES.get(sop) or (ds.SOPClassUID.name if sop else "unknown class")
    modality = ds.get("Modality", "")
    return f"{name}{f', modality {modality}' if modality else ''}"


def read_dicom(data: bytes, max_pixels: int) -> Image.Image:
    """The first frame of a DICOM colour photograph as RGB, or DicomError saying why not."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
        log.debug("unreadable DICOM header: %s", type(exc).__name__)
        raise DicomError("this DICOM file is damaged or incomplete and cannot be read.") from None
    sop = str(ds.get("SOPClassUID", ""))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if "PixelData" not in ds:
        if _expects_pixels(ds):
            raise DicomError("this DICOM file is damaged or incomplete: it ends before its image.")
        raise DicomError(f"this DICOM file ({_kind(ds)}) holds no image.")
    if sop not in PHOTO_CLASSES or photometric not in COLOUR or ds.get("SamplesPerPixel") != 3:
        raise DicomError(f"this DICOM file is not a colour photograph of the skin ({_kind(ds)}, "
                         f"{photometric or 'no colour model'}). skinapp reads {ACCEPTED}.")
    rows, cols = _dimension(ds, "Rows"), _dimension(ds, "Columns")
    if rows * cols > max_pixels:
        raise DicomError(f"the image is too large ({cols}x{rows} = {rows * cols:,} pixels; the limit is "
                         f"{max_pixels:,}).")
    return Image.fromarray(_rgb(ds), "RGB")


def _expects_pixels(ds) -> bool:
    """Whether a file without Pixel Data was cut short rather than never meant to hold an image.

    pydicom stops quietly at the end of a truncated file, so a cut photograph looks like a report or a
    presentation state. An empty dataset, an image-size tag or an image SOP class (every "... Image Storage"
    requires Pixel Data) says the pixels were lost, and the user should hear "damaged", not "no image".
    """
    sop = str(ds.get("SOPClassUID", ""))
    image_class = sop in PHOTO_CLASSES or (bool(sop) and ds.SOPClassUID.name.endswith("Image Storage"))
    return len(ds) == 0 or image_class or "Rows" in ds or "Columns" in ds


def _dimension(ds, keyword: str) -> int:
    """Rows or Columns as a positive whole number, or DicomError.

    Broken exports leave the element present but empty (None) or of the wrong type; ``int()`` on that raised
    TypeError and crashed a whole batch instead of refusing one file.
    """
    if keyword not in ds:
        raise DicomError(f"this DICOM file is damaged: it has no {keyword} value (image size).")
    value = ds[keyword].value
    if value is None or value == "":
        raise DicomError(f"this DICOM file is damaged: its {keyword} value (image size) is empty.")
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        shown = repr(value)[:40]
        raise DicomError(f"this DICOM file is damaged: its {keyword} value (image size) {shown} is not a "
                         f"positive whole number.")
    return number


def _rgb(ds) -> np.ndarray:
    """Decoded pixels of frame 0 as 8-bit RGB (pydicom converts YBR to RGB; higher bit depths are scaled)."""
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds, index=0 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None)
    except NotImplementedError:
        raise DicomError(f"this DICOM image is compressed with {ds.file_meta.TransferSyntaxUID.name}, which "
                         f"cannot be decoded here; export it uncompressed or as JPEG baseline.") from None
    except (ValueError, RuntimeError, OSError, TypeError, AttributeError, KeyError) as exc:
        log.debug("DICOM pixel decode failed: %s", type(exc).__name__)
        raise DicomError("this DICOM image is damaged or incomplete and cannot be decoded.") from None
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DicomError("this DICOM image does not have three colour channels.")
    bits = int(ds.get("BitsStored", 8) or 8)
    if arr.dtype != np.uint8 or bits != 8:
        arr = np.clip(np.round(arr.astype(np.float64) * 255.0 / (2 ** bits - 1)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)
