"""Real and written scan files the tests share: pydicom's CT/MR test files, DICOM series and Enhanced CT written on the fly, SimpleITK's reading of a series."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

CT_SMALL = get_testdata_file("CT_small.dcm")


MR_SMALL = get_testdata_file("MR_small.dcm")


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows run posterior, columns run downwards (inferior)


def write_ct_series(folder: Path, n: int = 5, orientation=AXIAL, spacing_mm: float = 2.5,
                    series_uid: str | None = None, description: str = "test series") -> list[np.ndarray]:
    """Write CT_small as ``n`` slices of one new series; return each slice's HU in position order.

    Slices lie ``spacing_mm`` apart along the normal, differ by 10 HU each, carry InstanceNumbers in the
    reverse of their position order and file names in neither order, so only geometry can sort them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(CT_SMALL)
    base = template.pixel_array.astype(np.int16)
    series_uid = series_uid or generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.asarray(template.ImagePositionPatient, dtype=float)
    hu = []
    for k in range(n):
        ds = copy.deepcopy(template)  # Dataset.copy() is shallow: it would share PixelData
        stored = base + 10 * k
        ds.PixelData = stored.tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta = FileMetaDataset(template.file_meta)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n - k
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [round(float(v), 4) for v in origin + k * spacing_mm * normal]
        ds.SliceThickness = spacing_mm
        ds.SpacingBetweenSlices = spacing_mm
        ds.save_as(folder / f"slice_{(7919 * k) % 10007:05d}.dcm")  # file names in neither order
        hu.append(stored * float(template.RescaleSlope) + float(template.RescaleIntercept))
    return hu


def write_enhanced_ct(path: Path, n_frames: int = 3, spacing_mm: float = 2.0) -> np.ndarray:
    """Write an Enhanced CT file whose rescale lives only in the functional groups; return HU [S->I order].

    Frames are stored from superior to inferior, with intercept -1024 HU in PixelValueTransformationSequence.
    """
    template = pydicom.dcmread(CT_SMALL)
    stored = np.stack([template.pixel_array.astype(np.int16) + 10 * k for k in range(n_frames)])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Enhanced^Test", "enh-1", "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = n_frames
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    measures, plane, rescale = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.75], spacing_mm
    plane.ImageOrientationPatient = list(AXIAL)
    rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = -1024, 1, "HU"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [plane]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(n_frames):
        position, group = Dataset(), Dataset()
        position.ImagePositionPatient = [-30.0, -40.0, 100.0 - k * spacing_mm]
        group.PlanePositionSequence = [position]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return (stored - 1024.0)[::-1]


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def water_phantom(size: int, spacing_mm: float) -> np.ndarray:
    """Smooth water ellipse (40 HU, a broad +30 HU bump) in air, with disks of 100, 300, -80 and 60 HU (HU)."""
    coords = (np.arange(size) - (size - 1) / 2) * spacing_mm
    y, x = coords[:, None], coords[None, :]
    a, b = 0.45 * size * spacing_mm, 0.35 * size * spacing_mm  # ellipse half-axes, mm
    body = (x / a) ** 2 + (y / b) ** 2 < 1
    bump = 30 * np.exp(-((x - 0.3 * a) ** 2 + (y + 0.2 * b) ** 2) / (0.125 * a**2))
    hu = np.where(body, 40.0 + bump, -1000.0)
    for cy, cx, radius, value in ((0.3, -0.4, 0.12, 100), (-0.35, 0.1, 0.08, 300), (0, 0, 0.05, -80), (-0.2, -0.5, 0.1, 60)):
        hu = np.where(np.hypot(y - cy * b, x - cx * a) < radius * a, value, hu)
    return ndimage.gaussian_filter(hu, 0.7).astype(np.float32)
