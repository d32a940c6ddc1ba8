"""The one image reader: JPG, PNG and DICOM files -> the 8-bit grey image CheXzero sees.

:func:`read_image` gives the display-ready grey image of any supported file (2-D uint8, full size),
:func:`load_cxr` the (320, 320) image preprocessing writes to the HDF5 file and ``predict.py``
scores; both raise :class:`ImageDecodeError` with a one-line reason for a file that gives no
pixels (missing, empty, truncated, corrupt, or a DICOM this reader refuses).

* JPG (grey, RGB, CMYK) and PNG (8 and 16 bit) are decoded by OpenCV at full depth; a 16-bit PNG
  (PadChest) is scaled by its real bit depth (:func:`to_uint8`). :func:`load_cxr` keeps CheXzero's
  pixels exactly: a colour JPG is resized in RGB and turned grey by the paste, as the original did.
* DICOM (``.dcm``, ``.dicom``, or any file with the 128-byte preamble and ``DICM``) is decoded by
  pydicom with the installed decoders (uncompressed, RLE, JPEG baseline/extended 8-bit, JPEG
  lossless, JPEG-LS, JPEG 2000, HTJ2K), then turned into grey levels by one of :data:`DICOM_RULES`:

  ``mimic`` (default): the conversion MIMIC-CXR-JPG (the model's training images) was made with
  from MIMIC-CXR's DICOMs, as its authors published it (Alistair Johnson, first author of the
  MIMIC-CXR-JPG paper, arXiv 1901.07042, gives "the core function used" in
  https://github.com/MIT-LCP/mimic-cxr/issues/16): the stored values (``pixel_array``, no Modality
  or VOI LUT) minus their minimum, divided by the new maximum, times 255, truncated to uint8;
  MONOCHROME1 inverted (``255 - x``); ``cv2.equalizeHist``; written as a JPEG by ``cv2.imwrite``
  (OpenCV's default quality, 95). The JPEG round trip is part of the rule, so a MIMIC-CXR DICOM
  gives the pixels of its MIMIC-CXR-JPG file. (The often-quoted variant with
  ``cv2.convertScaleAbs(x, alpha=255 / x.max())``, no minimum subtracted and rounding, is
  CheXpert's conversion, stanfordmlgroup/chexpert-labeler#11, not MIMIC-CXR-JPG's.)

  ``window``: the standard display pipeline (DICOM PS3.3 C.11): Modality LUT (Rescale
  Slope/Intercept or Modality LUT Sequence), then the first VOI (VOI LUT Sequence if present,
  else the first Window Center/Width with its VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID;
  none: the image's own min..max), MONOCHROME1 inverted, the VOI output range mapped onto 0..255
  and rounded; no equalisation. A LINEAR window puts x <= c - 0.5 - (w-1)/2 at 0 and
  x > c - 0.5 + (w-1)/2 at 255, linear in between (C.11.2.1.2.1). Presentation LUT Shape is not
  applied separately: MONOCHROME1 is inverted once, as the DX IOD intends.

  Refused with the reason: multi-frame files (a radiograph is one frame; this reader does not
  guess which frame), files without Pixel Data, truncated files, photometric interpretations
  other than MONOCHROME1/2, RGB and YBR, and transfer syntaxes no installed decoder reads (the
  message names the package that would). Colour (RGB, YBR) DICOMs are converted to grey with
  the ITU-R 601-2 luma (PIL's 'L') and a log warning says so; under ``mimic`` that grey image then
  goes through the rule as the stored values would.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

RESOLUTION = 320
# fast_decode decodes JPEGs at >= 2x the final size (1/4 scale for MIMIC's 3056 px), so the
# LANCZOS step still does a real reduction: max deviation 1-2 grey levels instead of 3-30 at 1x.
FAST_DECODE_OVERSAMPLE = 2
#: File name suffixes read as images (in any case); files without a suffix are read when they are DICOM.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
#: How DICOM pixels become grey levels (see the module docstring).
DICOM_RULES = ("mimic", "window")
#: The JPEG quality of MIMIC-CXR-JPG's files: cv2.imwrite's default, which the published conversion used.
MIMIC_JPEG_QUALITY = 95
_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")
# Transfer syntax UID -> permissively licensed package(s) that decode it (pydicom 3 plugins).
_GDCM, _OPENJPEG = "python-gdcm", "pylibjpeg pylibjpeg-openjpeg"
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": f"{_GDCM} (or Pillow)", "1.2.840.10008.1.2.4.51": _GDCM,
    "1.2.840.10008.1.2.4.57": _GDCM, "1.2.840.10008.1.2.4.70": _GDCM,
    "1.2.840.10008.1.2.4.80": f"pyjpegls (or {_GDCM})", "1.2.840.10008.1.2.4.81": f"pyjpegls (or {_GDCM})",
    "1.2.840.10008.1.2.4.90": _OPENJPEG, "1.2.840.10008.1.2.4.91": _OPENJPEG,
    "1.2.840.10008.1.2.4.201": _OPENJPEG, "1.2.840.10008.1.2.4.202": _OPENJPEG,
    "1.2.840.10008.1.2.4.203": _OPENJPEG, "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}
# What decodes the JPEG processes the installed plugins refuse (12-bit JPEG Extended, JPEG
# lossless with some predictors): only pylibjpeg-libjpeg, which is GPL-3.0 and so not a requirement.
_GPL_JPEG = ("pylibjpeg-libjpeg (GPL-3.0, hence not in requirements.txt; or convert the file to an "
             "uncompressed transfer syntax, e.g. gdcmconv --raw)")
_GPL_JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")


class ImageDecodeError(Exception):
    """An image file that cannot be turned into pixels (missing, empty, truncated, corrupt, refused)."""


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a DICOM file (Part 10): 128 bytes of preamble, then ``DICM``; False for any
    other file and for one that cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def may_be_dicom(path: str | os.PathLike) -> bool:
    """Whether a file could be DICOM judging by its name alone (a DICOM suffix, or none): no I/O."""
    suffix = Path(path).suffix.lower()
    return suffix in DICOM_SUFFIXES or not suffix


# --------------------------------------------------------------------------------------
# CheXzero's geometry: aspect-preserving LANCZOS resize, centred zero pad
# --------------------------------------------------------------------------------------


def scaled_size(size: tuple[int, int], desired_size: int = RESOLUTION) -> tuple[int, int]:
    """Size after CheXzero's aspect-preserving resize: long side -> desired, ``int()`` truncation.

    The float expression is the original's on purpose (ratio first, then multiply), so sizes
    that land a hair under an integer truncate exactly as CheXzero did.
    """
    ratio = float(desired_size) / max(size)
    return int(size[0] * ratio), int(size[1] * ratio)


def resize_and_pad(img: Image.Image, new_size: tuple[int, int], desired_size: int = RESOLUTION) -> Image.Image:
    """LANCZOS-resize ``img`` to ``new_size`` and paste it centred (floor offsets) on a black
    ``desired_size`` square 'L' canvas. An RGB input is converted to 'L' by the paste
    (ITU-R 601-2 luma), exactly as in the original."""
    img = img.resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (desired_size, desired_size))
    canvas.paste(img, ((desired_size - new_size[0]) // 2, (desired_size - new_size[1]) // 2))
    return canvas


def preprocess(img: Image.Image, desired_size: int = RESOLUTION) -> Image.Image:
    """CheXzero's image transform: aspect-preserving LANCZOS resize of the long side to
    ``desired_size`` (short side truncated by ``int()``), centred zero pad, 8-bit gray.

    Example: 2544x3056 (WxH) -> 266x320 pasted at x offset 27.
    """
    return resize_and_pad(img, scaled_size(img.size, desired_size), desired_size)


# --------------------------------------------------------------------------------------
# Bytes, JPG and PNG
# --------------------------------------------------------------------------------------


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, or ImageDecodeError for a missing, unreadable or empty one."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except OSError as e:
        raise ImageDecodeError(f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise ImageDecodeError("zero-byte file")
    return data


def _is_dicom_data(data: bytes, path: str | os.PathLike) -> bool:
    """DICOM by content (the ``DICM`` marker), or by a DICOM suffix on a file that is no JPEG or PNG."""
    if data[128:132] == b"DICM":
        return True
    return Path(path).suffix.lower() in DICOM_SUFFIXES and data[:2] != b"\xff\xd8" and data[:4] != b"\x89PNG"


def _check_complete(data: bytes) -> bytes:
    """Reject the cut-short JPEGs and PNGs a decoder would not report.

    A JPEG cut short still decodes with OpenCV (libjpeg pads the missing rows with gray and
    only prints a warning), so completeness is checked on the bytes: a JPEG needs an
    end-of-image marker after its last start-of-scan (entropy-coded data cannot contain
    either marker), a PNG needs its IEND chunk at the end.
    """
    if data[:2] == b"\xff\xd8":
        start_of_scan = data.rfind(b"\xff\xda")
        if start_of_scan < 0 or data.rfind(b"\xff\xd9") < start_of_scan:
            raise ImageDecodeError("truncated JPEG (no end-of-image marker after the scan data)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        raise ImageDecodeError("truncated PNG (no IEND chunk)")
    return data


def to_uint8(arr: np.ndarray, bits_stored: int | None = None) -> np.ndarray:
    """Scale a decoded array to uint8. uint8 passes through; uint16 is scaled by its real bit
    depth: the larger of ``bits_stored`` (e.g. PadChest ``BitsStored_DICOM``) and the bit
    length of the image maximum, so 12-bit data in a 16-bit PNG maps 4095 -> 255 instead of
    being crushed to black (OpenCV's default high-byte reduction) or clipped (PIL 'L')."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype != np.uint16:
        raise ImageDecodeError(f"unsupported pixel type {arr.dtype}")
    bits = max(8, int(arr.max()).bit_length(), min(int(bits_stored or 0), 16))
    scale = 255.0 / ((1 << bits) - 1)
    return np.rint(arr.astype(np.float32) * scale).astype(np.uint8)


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """OpenCV array (gray, BGR or BGRA, uint8) -> PIL 'L' or 'RGB' image."""
    if arr.ndim == 2:
        return Image.fromarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))
    if arr.ndim == 3 and arr.shape[2] == 4:
        return Image.fromarray(cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB))
    raise ImageDecodeError(f"unsupported image shape {arr.shape}")


def decode_image(data: bytes, bits_stored: int | None = None) -> Image.Image:
    """Decode image bytes at full depth with OpenCV -> PIL image ('L', or 'RGB' for colour files).

    Gray files stay single-channel (identical to the original's colour decode, whose three
    channels are equal and whose luma conversion is then the identity); colour files take
    the original's RGB path so their pixels match too.
    """
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if arr is None:
        raise ImageDecodeError("not decodable (corrupt or unsupported format)")
    return _array_to_pil(to_uint8(arr, bits_stored))


def _decode_jpeg_reduced(data: bytes, resolution: int) -> tuple[Image.Image, tuple[int, int]]:
    """JPEG decode with DCT-domain downscaling (libjpeg scale 1/2, 1/4 or 1/8 via PIL
    ``draft``) to the smallest size still ``FAST_DECODE_OVERSAMPLE`` times the final size,
    in gray. Returns the image and the final size, computed from the full-resolution size
    so the geometry equals the exact path."""
    try:
        img = Image.open(io.BytesIO(data))
        new_size = scaled_size(img.size, resolution)
        img.draft("L", (new_size[0] * FAST_DECODE_OVERSAMPLE, new_size[1] * FAST_DECODE_OVERSAMPLE))
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"not decodable: {e}") from None
    return (img if img.mode in ("L", "RGB") else img.convert("L")), new_size


# --------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _parse_dicom(data: bytes) -> Dataset:
    """The dataset of a DICOM file held in memory, telling a truncated file from one without an image.

    pydicom reads a file cut inside its encapsulated (compressed) Pixel Data without the Pixel
    Data and only warns that the file ended early; that warning is what marks it truncated.
    """
    import pydicom  # imported on the first DICOM only: it adds ~0.3 s to every process start
    from pydicom.errors import InvalidDicomError

    preamble = data[128:132] == b"DICM"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=not preamble)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError) as e:
            raise ImageDecodeError(f"not a readable DICOM file ({_first_line(e)})") from None
    ended_early = any("end of file" in str(w.message).lower() for w in caught)
    if "PixelData" not in ds:
        if ended_early:
            raise ImageDecodeError("truncated DICOM: the file ends inside its Pixel Data")
        if not preamble:
            raise ImageDecodeError("not a DICOM file (no 'DICM' marker at byte 128, no Pixel Data element)")
        raise ImageDecodeError("DICOM without Pixel Data (7FE0,0010): the file holds no image (a report, "
                               "presentation state or other non-image object), or was cut short before it")
    return ds


def _syntax_label(syntax: object) -> str:
    """'JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)'; an unknown UID once, marked so."""
    name = getattr(syntax, "name", str(syntax))
    return f"{name} ({syntax})" if name != str(syntax) else f"{syntax} (a UID pydicom does not know)"


def _present(ds: Dataset, keyword: str) -> bool:
    """The attribute is there with a value (an empty DS or sequence counts as absent)."""
    value = ds.get(keyword)
    return value is not None and value != "" and value != []


def _check_decodable(ds: Dataset) -> str:
    """The upper-case Photometric Interpretation of a single-frame grey or colour image whose
    transfer syntax an installed decoder reads; ImageDecodeError with the reason otherwise."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise ImageDecodeError("DICOM without a Transfer Syntax UID (0002,0010): damaged or truncated header")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageDecodeError(f"multi-frame DICOM ({frames} frames): one radiograph per file is expected and "
                               f"this reader does not pick a frame; save the frame you want as its own file")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _GREY + _COLOUR:
        raise ImageDecodeError(f"DICOM Photometric Interpretation {photometric or '(missing)'} is not supported "
                               f"(MONOCHROME1, MONOCHROME2, RGB and YBR are)")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageDecodeError(f"no pixel decoder for transfer syntax {_syntax_label(syntax)}: pydicom has none; "
                               f"convert the file to an uncompressed transfer syntax first") from None
    if not decoder.is_available:
        need = _DECODER_PACKAGES.get(str(syntax)) or "; ".join(decoder.missing_dependencies)
        raise ImageDecodeError(f"transfer syntax {_syntax_label(syntax)} needs a pixel decoder that is not "
                               f"installed: pip install {need}")
    if syntax.is_encapsulated or len(ds.PixelData) >= _native_bytes(ds):
        return photometric
    raise ImageDecodeError(f"truncated DICOM: its Pixel Data holds {len(ds.PixelData):,} of the "
                           f"{_native_bytes(ds):,} bytes its header announces")


def _native_bytes(ds: Dataset) -> int:
    """Bytes of uncompressed Pixel Data the header announces (rows x columns x samples x bits)."""
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if not _present(ds, k)]
    if missing:
        raise ImageDecodeError(f"DICOM image without {', '.join(missing)}: damaged header")
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * int(ds.BitsAllocated)
    return (bits + 7) // 8


def _stored_pixels(ds: Dataset) -> np.ndarray:
    """Decode the Pixel Data (colour comes back as RGB) with the reason of a failure in the error."""
    try:
        return ds.pixel_array
    except (RuntimeError, ValueError, NotImplementedError, AttributeError, TypeError, KeyError, IndexError) as e:
        syntax = ds.file_meta.TransferSyntaxUID
        hint = f"; {_GPL_JPEG} would decode it" if str(syntax) in _GPL_JPEG_SYNTAXES else ""
        reason = " ".join(str(e).split())[:300]
        raise ImageDecodeError(f"DICOM Pixel Data ({_syntax_label(syntax)}) not decodable by the installed "
                               f"decoders: {reason}{hint}") from None


def _luma(rgb: np.ndarray, bits_stored: int) -> np.ndarray:
    """RGB samples of ``bits_stored`` bits -> 8-bit grey by the ITU-R 601-2 luma (PIL's 'L')."""
    if rgb.dtype != np.uint8:
        rgb = np.rint(rgb.astype(np.float64) * (255.0 / ((1 << bits_stored) - 1))).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("L"))


def mimic_cxr_jpg(pixels: np.ndarray, photometric: str) -> np.ndarray:
    """MIMIC-CXR-JPG's DICOM -> JPG conversion (MIT-LCP/mimic-cxr#16; module docstring) of a 2-D
    array of stored values: (x - min) / max * 255 truncated to uint8, MONOCHROME1 inverted,
    histogram equalisation, then the JPEG encode and decode at :data:`MIMIC_JPEG_QUALITY`."""
    shifted = pixels.astype(np.int64) - int(pixels.min())    # int64: no wrap-around for signed data
    top = int(shifted.max())
    if top == 0:
        raise ImageDecodeError("every pixel has the same value: the mimic DICOM rule scales by the image's range "
                               "and has none (try --dicom_rule window if the file has a window)")
    grey = ((shifted / top) * 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        grey = cv2.bitwise_not(grey)
    ok, jpeg = cv2.imencode(".jpg", cv2.equalizeHist(grey), [cv2.IMWRITE_JPEG_QUALITY, MIMIC_JPEG_QUALITY])
    if not ok:
        raise ImageDecodeError("OpenCV could not encode the converted image as JPEG")
    return cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)


def display_window(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """The standard display of a grey DICOM's stored values (module docstring, ``window`` rule):
    Modality LUT, first VOI, MONOCHROME1 inversion, the VOI output range onto 0..255, rounded."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    values = apply_modality_lut(pixels, ds)
    lut = ds.get("VOILUTSequence")
    has_lut = bool(lut) and _present(lut[0], "LUTDescriptor") and _present(lut[0], "LUTData")
    has_window = _present(ds, "WindowCenter") and _present(ds, "WindowWidth")
    try:
        if has_lut:   # preferred over a window, as pydicom's apply_voi_lut does
            if values.dtype.kind == "f":   # LUT input: the Modality LUT output rounded to whole values
                values = np.rint(values).astype(np.int64)
            out = apply_voi(values, ds, 0).astype(np.float64)
            bits = int(lut[0].LUTDescriptor[2])
            low, high = 0.0, float((1 << max(bits, int(out.max()).bit_length())) - 1)
        elif has_window:
            out = apply_windowing(values, ds, 0)
            with np.errstate(over="ignore"):   # the window's own output range: its two extremes
                low, high = apply_windowing(np.array([-np.inf, np.inf]), ds, 0).tolist()
        else:
            out = values.astype(np.float64)
            low, high = float(out.min()), float(out.max())
    except (ValueError, NotImplementedError, AttributeError, TypeError, IndexError) as e:
        raise ImageDecodeError(f"DICOM VOI (window / VOI LUT) not applicable: {_first_line(e)}") from None
    if high == low:
        raise ImageDecodeError("DICOM without a window whose pixels all have the same value: nothing to display")
    unit = np.clip((out - low) / (high - low), 0.0, 1.0)
    if str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8)


def _read_dicom(data: bytes, path: str | os.PathLike, dicom_rule: str) -> np.ndarray:
    """A DICOM file's 2-D uint8 grey image under ``dicom_rule``."""
    ds = _parse_dicom(data)
    photometric = _check_decodable(ds)
    pixels = _stored_pixels(ds)
    if photometric in _COLOUR:
        log.warning("%s: colour DICOM (%s) converted to grey (ITU-R 601-2 luma)", path, photometric)
        grey = _luma(pixels, int(ds.get("BitsStored") or 8))
        return mimic_cxr_jpg(grey, "MONOCHROME2") if dicom_rule == "mimic" else grey
    if pixels.ndim != 2:
        raise ImageDecodeError(f"DICOM pixel array of shape {pixels.shape}: one grey image expected")
    return mimic_cxr_jpg(pixels, photometric) if dicom_rule == "mimic" else display_window(pixels, ds)


# --------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------


def _check_rule(dicom_rule: str) -> None:
    if dicom_rule not in DICOM_RULES:
        raise ValueError(f"dicom_rule must be one of {DICOM_RULES}, not {dicom_rule!r}")


def read_image(path: str | os.PathLike, dicom_rule: str = "mimic", bits_stored: int | None = None) -> np.ndarray:
    """The display-ready 8-bit grey image of a JPG, PNG or DICOM file (2-D uint8, full size).

    Colour JPGs and PNGs are turned grey by the ITU-R 601-2 luma; 16-bit PNGs are scaled by
    their real bit depth (``bits_stored`` if larger); DICOMs follow ``dicom_rule`` (module
    docstring). Raises :class:`ImageDecodeError` with the reason for a file that gives no pixels.
    """
    _check_rule(dicom_rule)
    data = _read_bytes(path)
    if _is_dicom_data(data, path):
        return _read_dicom(data, path, dicom_rule)
    img = decode_image(_check_complete(data), bits_stored)
    return np.asarray(img if img.mode == "L" else img.convert("L"))


def load_cxr(path: str | os.PathLike, resolution: int = RESOLUTION, fast_decode: bool = False,
             bits_stored: int | None = None, dicom_rule: str = "mimic") -> np.ndarray:
    """Read one image file and return CheXzero's (resolution, resolution) uint8 image.

    JPGs and PNGs give the original's pixels exactly; DICOMs are read by :func:`read_image`
    under ``dicom_rule``, then resized and padded the same way. ``fast_decode`` decodes JPEGs
    at a reduced scale before the LANCZOS step (faster, small pixel deviation: see
    bench/README.md); output size and offsets are the same as the exact path. Raises
    :class:`ImageDecodeError` with a reason on failure.
    """
    _check_rule(dicom_rule)
    data = _read_bytes(path)
    if _is_dicom_data(data, path):
        img = Image.fromarray(_read_dicom(data, path, dicom_rule))
        new_size = scaled_size(img.size, resolution)
    elif fast_decode and data[:2] == b"\xff\xd8":
        img, new_size = _decode_jpeg_reduced(_check_complete(data), resolution)
    else:
        img = decode_image(_check_complete(data), bits_stored)
        new_size = scaled_size(img.size, resolution)
    if min(new_size) < 1:
        raise ImageDecodeError(f"degenerate image size {img.size}")
    return np.asarray(resize_and_pad(img, new_size, resolution))
