"""DICOM phantoms: the MIMIC-CXR images as DICOM files whose display is known to the grey level.

Why: the pipeline reads DICOM too (image_reader), and a reader has many ways to be subtly wrong:
it may skip the Modality LUT (Rescale Slope/Intercept), use the wrong VOI (window, several
windows, VOI LUT Sequence, SIGMOID), forget to invert MONOCHROME1, or scale by BitsStored wrongly.
Each file written here stores a phantom's 8-bit grey image (the MIMIC-CXR-JPG pixels as decoded)
so that Modality LUT -> VOI LUT (PS3.3 C.11.2.1.2) -> MONOCHROME1 inversion -> rounding to 8 bits
gives back exactly those grey levels; a reader is right when it reproduces the JPG's pixels.

How the stored values are chosen (:func:`stored_values`): for bit depth b the linear window maps
x = k*g + x0 onto grey level g exactly: with center c = x0 + 0.5 + 127.5*k and width
w = 255*k + 1, PS3.3 C.11.2.1.2.1 gives y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255 = g, and
x0 is exactly the lower threshold, so g = 0 and 255 are reached too. Stored values are x itself,
or (x - intercept) / slope where the file has a Modality LUT. The VOI LUT Sequence variant holds
the same linear map as a table with 16-bit output (257 * g); the SIGMOID variant stores the
inverse sigmoid of g (C.11.2.1.3.1), rounded onto the stored grid, which still rounds back to g.
MONOCHROME1 files store the values of 255 - g, which display as g once inverted. Files are
DX For Presentation (Rescale 1/0, Presentation LUT Shape IDENTITY for MONOCHROME2 and INVERSE for
MONOCHROME1, as the DX IOD asks: one inversion, not two), or CR where they carry a Modality LUT
(Rescale Slope 2, Intercept -1000).

Transfer syntaxes (:data:`TRANSFER_SYNTAXES`): Explicit VR Little Endian; RLE Lossless
(pylibjpeg-rle), JPEG-LS Lossless (pyjpegls), JPEG 2000 Lossless (pylibjpeg-openjpeg) through
pydicom's ``Dataset.compress``; JPEG Lossless Process 14 SV1 and JPEG Baseline (8-bit only)
through GDCM's ImageChangeTransferSyntax, as pydicom 3.0 has no encoder for them. Not written:
JPEG Extended (Process 2 & 4) 12-bit, which GDCM encodes but no permissively licensed decoder
installed here reads back (pydicom's gdcm and pillow plugins refuse 12-bit JPEG Extended; the
pylibjpeg-libjpeg decoder is GPLv3), and the lossy JPEG-LS Near-Lossless and JPEG 2000 syntaxes,
which could not give the grey levels back exactly. JPEG 2000 (openjpeg's six resolutions) needs
images of 32 pixels or more a side. Each encoder plugin is pinned, so one seed gives
byte-identical files with the same installed codec versions.

What ``generate(..., dicom=N)`` (``python -m phantom --dicom N``) adds to a phantom root:
  mimic-cxr/2.0.0/files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.dcm  DICOM copies of the first N
      undamaged MIMIC-CXR-JPG images (same dicom_ids; 12-bit, linear window, mostly MONOCHROME2
      and Explicit VR Little Endian, some MONOCHROME1 and compressed, drawn from stream
      ``dicom_mimic``), listed in mimic-cxr/2.0.0/cxr-record-list.csv.gz as in the real release;
  dicom/variants/<variant>.dcm  one file per entry of :data:`VARIANTS` (photometric x bits x VOI x
      Modality LUT x transfer syntax), each from a different frontal MIMIC image while there are enough;
  dicom/edge_cases/  a multi-frame file, one without Pixel Data, an RGB one, one cut in its
      Pixel Data and a valid one without extension (IM000001);
and a "dicom" entry in manifest.json saying what each file is and which JPG it shows.
"""
from __future__ import annotations

import csv
import gzip
import io
import tempfile
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import gdcm
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from tqdm import tqdm

from errors import UserError

from . import streams
from .images import ImageJob, parallel_map

#: Short name -> transfer syntax UID of every syntax written.
TRANSFER_SYNTAXES = {"explicit_le": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg_ls": JPEGLSLossless,
                     "jpeg2000": JPEG2000Lossless, "jpeg_lossless": JPEGLosslessSV1,
                     "jpeg_baseline": JPEGBaseline8Bit}
#: pydicom's encoder plugin for the syntaxes it compresses (pinned: plugins differ in their bytes).
PYDICOM_PLUGINS = {"rle": "pylibjpeg", "jpeg_ls": "pyjpegls", "jpeg2000": "pylibjpeg"}
VOIS = ("window", "windows", "lut", "sigmoid")
#: Bits stored -> (k, x0): the linear window maps x = k * g + x0 onto grey level g.
LINEAR = {8: (1, 0), 12: (16, 8), 16: (256, 64)}
#: Rescale Slope and Intercept of the variants with a Modality LUT.
RESCALE = (2, -1000)
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
MULTIFRAME_WORD_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")
PIXEL_SPACING_MM = "0.556"   # a 0.139 mm detector pixel; the phantoms are real sizes divided by 4


@dataclass(frozen=True)
class Variant:
    """How a grey image is stored: photometric interpretation, bits stored (8, 12 or 16; JPEG
    Baseline holds 8), the VOI (one linear window, several windows of which the first is exact, a VOI
    LUT Sequence, or a SIGMOID window), a Modality LUT or not, and the transfer syntax."""

    photometric: str = "MONOCHROME2"
    bits_stored: int = 12
    voi: str = "window"
    rescale: bool = False
    syntax: str = "explicit_le"

    def __post_init__(self) -> None:
        if (self.photometric not in ("MONOCHROME1", "MONOCHROME2") or self.bits_stored not in LINEAR
                or self.voi not in VOIS or self.syntax not in TRANSFER_SYNTAXES):
            raise ValueError(f"unknown DICOM variant {self}")
        if self.syntax == "jpeg_baseline" and self.bits_stored != 8:
            raise ValueError(f"{self}: JPEG Baseline holds 8 bits")
        if self.bits_stored == 8 and (self.voi == "sigmoid" or self.rescale):
            raise ValueError(f"{self}: 8 bits are too few to invert a sigmoid or a Rescale Slope of 2")

    @property
    def name(self) -> str:
        """A file name stem saying what the variant is, e.g. mono1_16bit_lut_rescale_jpeg_ls."""
        rescale = "_rescale" if self.rescale else ""
        return f"mono{self.photometric[-1]}_{self.bits_stored}bit_{self.voi}{rescale}_{self.syntax}"


#: The flat dicom/variants/ folder: each transfer syntax with both photometric interpretations,
#: each lossless one at 12 and 16 bits, each VOI kind, with and without a Modality LUT.
VARIANTS = (
    Variant("MONOCHROME2", 12, "window", False, "explicit_le"),
    Variant("MONOCHROME1", 12, "window", False, "explicit_le"),
    Variant("MONOCHROME2", 16, "window", True, "explicit_le"),
    Variant("MONOCHROME1", 16, "lut", False, "explicit_le"),
    Variant("MONOCHROME2", 12, "windows", False, "rle"),
    Variant("MONOCHROME1", 16, "sigmoid", False, "rle"),
    Variant("MONOCHROME2", 16, "lut", True, "jpeg_ls"),
    Variant("MONOCHROME1", 12, "windows", True, "jpeg_ls"),
    Variant("MONOCHROME2", 12, "sigmoid", True, "jpeg2000"),
    Variant("MONOCHROME1", 16, "window", False, "jpeg2000"),
    Variant("MONOCHROME2", 16, "windows", False, "jpeg_lossless"),
    Variant("MONOCHROME1", 12, "lut", True, "jpeg_lossless"),
    Variant("MONOCHROME2", 8, "window", False, "jpeg_baseline"),
    Variant("MONOCHROME1", 8, "window", False, "jpeg_baseline"),
)


@dataclass(frozen=True)
class Header:
    """Who and what a file shows: the phantom's ids and the study's metadata. The UIDs derive
    from ``seed`` and the ids, so the same seed gives the same UIDs."""

    patient_id: str
    study_id: str
    image_id: str              # the dicom_id (the SOP Instance UID derives from it)
    seed: int
    female: bool = False
    view: str = "PA"           # ViewPosition: PA, AP, LATERAL, LL or ""
    date: str = "21100101"     # StudyDate
    time: str = "080000"       # StudyTime (HHMMSS.fff)
    procedure: str = "CHEST (PA AND LAT)"
    instance: int = 1


def phantom_uid(*parts: object) -> UID:
    """A UID under 2.25 made of a name-based (SHA-1, version 5) UUID of ``parts``: the same parts
    give the same UID, as ISO/IEC 9834-8 allows. (pydicom's ``generate_uid(prefix=None)`` ignores
    its entropy sources and returns a random UUID.)"""
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'chexzero-phantom:' + '/'.join(map(str, parts))).int}")


#: The writer's own implementation UID.
IMPLEMENTATION_UID = phantom_uid("implementation")


def window(variant: Variant) -> tuple[float, float]:
    """The (center, width) of the variant's first window: the exact linear one, or the SIGMOID."""
    if variant.voi == "sigmoid":
        return float(2 ** (variant.bits_stored - 1)), float(2 ** variant.bits_stored // 4)
    k, x0 = LINEAR[variant.bits_stored]
    return x0 + 0.5 + 127.5 * k, 255.0 * k + 1


def stored_table(variant: Variant) -> np.ndarray:
    """The stored value of each displayed grey level 0..255 (see the module docstring)."""
    levels = np.arange(256, dtype=np.float64)
    if variant.photometric == "MONOCHROME1":
        levels = 255 - levels
    slope, intercept = RESCALE if variant.rescale else (1, 0)
    if variant.voi == "sigmoid":
        center, width = window(variant)
        target = np.clip(levels, 0.3, 254.7)   # 0 and 255 are asymptotes; these round to them
        x = center + width / 4 * np.log(target / (255 - target))
    else:
        k, x0 = LINEAR[variant.bits_stored]
        x = k * levels + x0
    stored = np.round((x - intercept) / slope).astype(np.int64)
    assert 0 <= stored.min() and stored.max() < 2 ** variant.bits_stored, variant
    return stored


def stored_values(grey: np.ndarray, variant: Variant) -> np.ndarray:
    """The pixel values a file of this variant stores for an 8-bit grey image (uint8 or uint16)."""
    if grey.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit grey image, got {grey.dtype}")
    return stored_table(variant).astype(np.uint8 if variant.bits_stored == 8 else np.uint16)[grey]


def ds_number(value: float) -> str:
    """A DS value written exactly (the windows here are whole or half numbers)."""
    return f"{value:.1f}".removesuffix(".0")


def set_voi(ds: Dataset, variant: Variant) -> None:
    """The VOI LUT module of the variant (and its Modality LUT)."""
    center, width = window(variant)
    if variant.voi == "lut":
        k, x0 = LINEAR[variant.bits_stored]
        entries = 255 * k + 1
        item = Dataset()
        item.add_new(0x00283002, "US", [entries % 65536, x0, 16])              # LUTDescriptor
        item.LUTExplanation = "PHANTOM LINEAR"
        data = (np.arange(entries, dtype=np.int64) * 514 + k) // (2 * k)       # round(i * 257 / k)
        item.add_new(0x00283006, "OW", data.astype("<u2").tobytes())          # LUTData (over 64 KiB: OW)
        ds.VOILUTSequence = [item]
    elif variant.voi == "windows":
        ds.WindowCenter = [ds_number(center), ds_number(center)]
        ds.WindowWidth = [ds_number(width), ds_number((width - 1) // 2 + 1)]
        ds.WindowCenterWidthExplanation = ["PHANTOM EXACT", "NARROW"]
    else:
        ds.WindowCenter, ds.WindowWidth = ds_number(center), ds_number(width)
        ds.WindowCenterWidthExplanation = "PHANTOM SIGMOID" if variant.voi == "sigmoid" else "PHANTOM EXACT"
        if variant.voi == "sigmoid":
            ds.VOILUTFunction = "SIGMOID"
    if variant.rescale:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(RESCALE[1]), str(RESCALE[0]), "US"
    elif ds.SOPClassUID == DX_FOR_PRESENTATION:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"   # DX requires the identity


def dicom_time(value: str) -> str:
    """A MIMIC StudyTime (HHMMSS.fff without zero padding, e.g. 80556.875) as a DICOM TM."""
    whole, _, fraction = value.partition(".")
    return f"{int(whole):06d}" + (f".{fraction}" if fraction else "")


def base_dataset(header: Header, sop_class: UID, modality: str) -> Dataset:
    """The patient, study, series and equipment attributes of a chest radiograph."""
    sop_uid = phantom_uid(header.seed, "sop", header.image_id)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID, ds.file_meta.ImplementationVersionName = IMPLEMENTATION_UID, "PHANTOM_1"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = header.date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = dicom_time(header.time)
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "CheXzero phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = ds.PerformedProcedureStepDescription = header.procedure
    ds.PatientName = ""
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F" if header.female else "M"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = header.view
    ds.StudyInstanceUID = phantom_uid(header.seed, "study", header.study_id)
    ds.SeriesInstanceUID = phantom_uid(header.seed, "series", header.study_id, header.instance)
    ds.StudyID = header.study_id
    ds.SeriesNumber, ds.InstanceNumber = header.instance, 1
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray, bits_stored: int, photometric: str) -> None:
    """The Image Pixel module for ``pixels`` (rows x columns, frames x rows x columns, or
    rows x columns x 3 for RGB), stored uncompressed."""
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    if pixels.ndim == 3 and photometric != "RGB":
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:] if photometric != "RGB" else pixels.shape[:2]
    ds.PixelSpacing = ds.ImagerPixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.tobytes()


def dicom_dataset(grey: np.ndarray, header: Header, variant: Variant = Variant()) -> Dataset:
    """An uncompressed DX (or, with a Modality LUT, CR) dataset of the grey image stored as
    ``variant`` says; :func:`encode` compresses it."""
    sop_class, modality = (CR_IMAGE, "CR") if variant.rescale else (DX_FOR_PRESENTATION, "DX")
    ds = base_dataset(header, sop_class, modality)
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if variant.photometric == "MONOCHROME1" else -1
        ds.PresentationLUTShape = "INVERSE" if variant.photometric == "MONOCHROME1" else "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    set_pixels(ds, stored_values(grey, variant), variant.bits_stored, variant.photometric)
    set_voi(ds, variant)
    return ds


def gdcm_compress(ds: Dataset, syntax: UID) -> None:
    """Compress the Pixel Data with GDCM (JPEG Lossless SV1, JPEG Baseline), which pydicom 3.0
    cannot encode: GDCM converts a temporary copy, of which only the Pixel Data is kept."""
    target = {JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
              JPEGBaseline8Bit: gdcm.TransferSyntax.JPEGBaselineProcess1}[syntax]
    with tempfile.TemporaryDirectory(prefix="phantom-gdcm-") as folder:
        source, converted = str(Path(folder, "in.dcm")), str(Path(folder, "out.dcm"))
        ds.save_as(source, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(source)
        if not reader.Read():
            raise RuntimeError(f"GDCM could not read the phantom it was given ({source})")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(target))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM could not convert a phantom to {syntax.name}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(converted)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"GDCM could not write a phantom in {syntax.name}")
        ds["PixelData"] = pydicom.dcmread(converted)["PixelData"]
    ds.file_meta.TransferSyntaxUID = syntax


def encode(ds: Dataset, syntax: str) -> None:
    """Compress an uncompressed dataset in place to transfer syntax ``syntax`` (a key of
    :data:`TRANSFER_SYNTAXES`); JPEG Baseline is marked as lossy compression."""
    uid = TRANSFER_SYNTAXES[syntax]
    raw = len(ds.PixelData)
    if syntax in PYDICOM_PLUGINS:
        ds.compress(uid, encoding_plugin=PYDICOM_PLUGINS[syntax], generate_instance_uid=False)
    elif syntax != "explicit_le":
        gdcm_compress(ds, uid)
    if syntax == "jpeg_baseline":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{raw / len(ds.PixelData):.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"


def write_dicom(path: str | Path, grey: np.ndarray, header: Header, variant: Variant = Variant()) -> None:
    """Write the 8-bit grey image as a DICOM file of this variant (see the module docstring:
    Modality LUT, VOI and MONOCHROME1 inversion give the grey levels back)."""
    ds = dicom_dataset(grey, header, variant)
    encode(ds, variant.syntax)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# ---- the DICOM part of a phantom root ---------------------------------------------------------

@dataclass(frozen=True)
class DicomJob:
    """One file to write: the JPG whose pixels it stores, where, its header and variant."""

    source: str
    path: str
    header: Header
    variant: Variant


def read_grey(path: str | Path) -> np.ndarray:
    """A phantom JPG's 8-bit pixels, as a reader decodes them."""
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise UserError(f"{path}: cannot read this phantom JPG to copy it into DICOM; regenerate the root")
    return grey


def write_dicom_job(job: DicomJob) -> None:
    write_dicom(job.path, read_grey(job.source), job.header, job.variant)


def mimic_headers(jpg_root: Path, jobs: list[ImageJob], seed: int) -> list[Header]:
    """The header of each MIMIC image job, from the metadata CSV that the writer wrote."""
    with gzip.open(jpg_root / "mimic-cxr-2.0.0-metadata.csv.gz", "rt", newline="") as f:
        metadata = {row["dicom_id"]: row for row in csv.DictReader(f)}
    headers, instances = [], {}
    for job in jobs:
        row = metadata[Path(job.path).stem]
        instances[row["study_id"]] = instances.get(row["study_id"], 0) + 1
        headers.append(Header(row["subject_id"], row["study_id"], row["dicom_id"], seed, job.female,
                              row["ViewPosition"], row["StudyDate"], row["StudyTime"],
                              row["PerformedProcedureStepDescription"], instances[row["study_id"]]))
    return headers


def mimic_variant(seed: int, index: int) -> Variant:
    """The variant of MIMIC image ``index`` in the DICOM tree: 12-bit with one linear window,
    MONOCHROME1 one time in ten, mostly uncompressed."""
    rng = streams.rng(seed, "dicom_mimic", index)
    photometric = "MONOCHROME1" if rng.random() < 0.1 else "MONOCHROME2"
    syntax = str(rng.choice(["explicit_le", "jpeg2000", "jpeg_lossless", "rle"], p=[0.6, 0.2, 0.1, 0.1]))
    return Variant(photometric, 12, "window", False, syntax)


def write_edge_cases(out: Path, source: str, header: Header) -> list[dict]:
    """The edge-case files under dicom/edge_cases/, from one grey image; returns their manifest
    entries (path, case, what it is, the JPG it shows)."""
    folder = out / "dicom" / "edge_cases"
    folder.mkdir(parents=True, exist_ok=True)
    grey, plain = read_grey(out / source), Variant()
    cases = []

    def add(name: str, case: str, what: str, ds: Dataset | None = None, data: bytes | None = None) -> None:
        if ds is not None:
            ds.save_as(folder / name, enforce_file_format=True)
        else:
            (folder / name).write_bytes(data)
        cases.append({"path": f"dicom/edge_cases/{name}", "case": case, "what": what, "source": source})

    multi = base_dataset(replace(header, image_id=f"{header.image_id}/multi_frame"), MULTIFRAME_WORD_SC, "OT")
    set_pixels(multi, np.stack([stored_values(grey, plain), stored_values(grey[:, ::-1].copy(), plain)]), 12,
               "MONOCHROME2")
    set_voi(multi, plain)
    add("multi_frame.dcm", "multi_frame", "NumberOfFrames 2 (the image, then its mirror image), 12-bit "
        "MONOCHROME2, linear window", multi)
    empty = dicom_dataset(grey, replace(header, image_id=f"{header.image_id}/no_pixel_data"), plain)
    del empty.PixelData
    add("no_pixel_data.dcm", "no_pixel_data", "a complete DX header without Pixel Data", empty)
    rgb = base_dataset(replace(header, image_id=f"{header.image_id}/rgb"), SECONDARY_CAPTURE, "OT")
    set_pixels(rgb, np.repeat(grey[:, :, None], 3, axis=2), 8, "RGB")
    add("rgb.dcm", "rgb", "Secondary Capture, RGB, SamplesPerPixel 3, 8-bit: the grey image in all three "
        "channels", rgb)
    whole = io.BytesIO()
    full = dicom_dataset(grey, replace(header, image_id=f"{header.image_id}/truncated"), plain)
    full.save_as(whole, enforce_file_format=True)
    data = whole.getvalue()
    add("truncated.dcm", "truncated", "12-bit MONOCHROME2 file cut in the middle of its Pixel Data",
        data=data[: len(data) - len(full.PixelData) // 2])
    valid = dicom_dataset(grey, replace(header, image_id=f"{header.image_id}/no_extension"), plain)
    add("IM000001", "no_extension", "a valid 12-bit MONOCHROME2 file (preamble and DICM) without file "
        "extension: reads as the grey image", valid)
    return cases


def write_record_list(out: Path, dicom_root: Path, jobs: list[DicomJob]) -> str:
    """MIMIC-CXR's cxr-record-list.csv.gz (subject_id, study_id, dicom_id, path) for the DICOM
    files written; returns its path under the root."""
    rows = sorted((int(j.header.patient_id), int(j.header.study_id), j.header.image_id,
                   Path(j.path).relative_to(out / dicom_root).as_posix()) for j in jobs)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["subject_id", "study_id", "dicom_id", "path"])
    writer.writerows(rows)
    path = dicom_root / "cxr-record-list.csv.gz"
    (out / path).write_bytes(gzip.compress(buffer.getvalue().encode(), mtime=0))
    return path.as_posix()


def write_dicom_root(out: Path, mimic_jobs: list[ImageJob], seed: int, count: int, workers: int,
                     jpg_root: Path, dicom_root: Path) -> dict:
    """The DICOM part of a phantom root (see the module docstring), written after the JPGs:
    DICOM copies of the first ``count`` undamaged MIMIC images under ``dicom_root``/files (the
    MIMIC-CXR tree, beside the reports), dicom/variants/ and dicom/edge_cases/. Returns the
    manifest's "dicom" entry."""
    headers = mimic_headers(out / jpg_root, mimic_jobs, seed)
    usable = [(i, job, header) for i, (job, header) in enumerate(zip(mimic_jobs, headers)) if not job.damage]
    if not usable:
        raise UserError("no undamaged MIMIC image to copy into DICOM: generate more --studies")

    def relative(path: str) -> str:
        return Path(path).relative_to(out).as_posix()

    tree = [DicomJob(job.path, str(out / dicom_root / Path(job.path).relative_to(out / jpg_root).with_suffix(".dcm")),
                     header, mimic_variant(seed, i)) for i, job, header in usable[:count]]
    frontal = [(job, header) for _, job, header in usable if header.view in ("PA", "AP")] or [u[1:] for u in usable]
    variants = []
    for n, variant in enumerate(VARIANTS):
        job, header = frontal[n % len(frontal)]
        variants.append(DicomJob(job.path, str(out / "dicom" / "variants" / f"{variant.name}.dcm"),
                                 replace(header, image_id=f"{header.image_id}/{variant.name}"), variant))
    jobs = tree + variants
    for _ in tqdm(parallel_map(write_dicom_job, jobs, workers), total=len(jobs), desc="dicom", unit="file"):
        pass
    by_variant = Counter(job.variant.name for job in tree)
    source, header = frontal[0]
    return {
        "mimic": {"files": len(tree), "by_variant": dict(sorted(by_variant.items())),
                  "record_list": write_record_list(out, dicom_root, tree) if tree else None},
        "variants": [{"path": relative(j.path), "source": relative(j.source), **asdict(j.variant),
                      "transfer_syntax": str(TRANSFER_SYNTAXES[j.variant.syntax])} for j in variants],
        "edge_cases": write_edge_cases(out, relative(source.path), header),
    }
