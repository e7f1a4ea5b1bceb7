"""Small DICOM files built with pydicom itself, carrying made-up patient details that must never be shown."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

PATIENT = {"PatientName": "Doe^Jane^Q", "PatientID": "PID-777-31", "PatientBirthDate": "19510203",
           "InstitutionName": "St Example Clinic", "ReferringPhysicianName": "Who^Doctor"}
PHI_STRINGS = ("Doe", "Jane", "PID-777-31", "19510203", "St Example", "Who^Doctor", "Doctor")


def dicom_bytes(img: Image.Image | np.ndarray, *, sop: str = "dermoscopic", photometric: str = "RGB",
                syntax: str = "explicit", modality: str = "XC", frames: int = 1) -> bytes:
    """A Part 10 file of ``img``; ``syntax`` is explicit (uncompressed), rle or jpeg (baseline, YBR_FULL_422)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import convert_color_space
    from pydicom.uid import (DermoscopicPhotographyImageStorage, ExplicitVRLittleEndian, JPEGBaseline8Bit,
                             RLELossless, SecondaryCaptureImageStorage, VLPhotographicImageStorage,
                             generate_uid)

    classes = {"dermoscopic": DermoscopicPhotographyImageStorage, "photo": VLPhotographicImageStorage,
               "sc": SecondaryCaptureImageStorage, "ct": "1.2.840.10008.5.1.4.1.1.2"}
    arr = np.asarray(img)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = classes[sop]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for k, v in PATIENT.items():
        setattr(ds, k, v)
    ds.Modality = modality
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.PixelRepresentation = 0
    if arr.ndim == 2:  # a grey slice (a CT, say)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelData = arr.astype(np.uint16).tobytes()
    else:
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PhotometricInterpretation = photometric
        data = np.ascontiguousarray(np.repeat(arr[None], frames, 0) if frames > 1 else arr)
        if frames > 1:
            ds.NumberOfFrames = frames
        if photometric == "YBR_FULL":
            data = convert_color_space(data, "RGB", "YBR_FULL")
        ds.PixelData = data.astype(np.uint8).tobytes()
        if syntax == "rle":
            ds.compress(RLELossless, data.astype(np.uint8))
        elif syntax == "jpeg":
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=95, subsampling=2)
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
            ds.PhotometricInterpretation = "YBR_FULL_422"
            ds.PixelData = encapsulate([buf.getvalue()])
            ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
