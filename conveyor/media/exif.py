"""A small, JSON-safe summary of a photo's EXIF: camera, lens, when, where, exposure.

:func:`read_exif` runs inside the sandboxed decoder (``conveyor.media.image``), on the
source image before its metadata is dropped, so it sees hostile EXIF first hand. It never
raises: a tag that cannot be read (wrong type, zero denominator, NaN, a date that is no
date, a latitude of 400°) is left out, and anything unexpected from Pillow drops the field
or, at worst, the whole summary.

Keys (each present only when the image carries the tag and its value is usable):

``camera_make``, ``camera_model``, ``lens``
    Strings, stripped of NULs and control characters, at most 64 characters.
``taken_at``
    ISO 8601 from ``DateTimeOriginal`` (else ``DateTimeDigitized``, else ``DateTime``),
    with the ``OffsetTime*`` zone when there is a valid one: ``"2024-05-01T14:03:22+02:00"``.
    ``None`` when a date tag is present but is not a real date (``"0000:00:00 00:00:00"``).
``gps``
    ``{"lat": float, "lon": float}`` in decimal degrees (south and west negative), plus
    ``"alt"`` (metres, negative below sea level) when readable. Left out unless both
    latitude and longitude are valid.
``orientation``
    EXIF orientation, 1-8 (the canonical JPEG has it applied already).
``iso`` (int), ``f_number`` (float), ``exposure_time`` (float seconds), ``focal_length``
(float millimetres)
    Exposure settings, when present and positive.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from fractions import Fraction
from typing import Any

from PIL import Image

__all__ = ["read_exif"]

# Base IFD (0th) tags
_MAKE = 0x010F
_MODEL = 0x0110
_ORIENTATION = 0x0112
_DATETIME = 0x0132
# Sub-IFDs
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
# Exif IFD tags
_EXPOSURE_TIME = 0x829A
_F_NUMBER = 0x829D
_ISO = 0x8827
_DATETIME_ORIGINAL = 0x9003
_DATETIME_DIGITIZED = 0x9004
_OFFSET_TIME = 0x9010
_OFFSET_TIME_ORIGINAL = 0x9011
_OFFSET_TIME_DIGITIZED = 0x9012
_FOCAL_LENGTH = 0x920A
_LENS_MAKE = 0xA433
_LENS_MODEL = 0xA434
# GPS IFD tags
_GPS_LAT_REF = 1
_GPS_LAT = 2
_GPS_LON_REF = 3
_GPS_LON = 4
_GPS_ALT_REF = 5
_GPS_ALT = 6

_MAX_TEXT = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_OFFSET = re.compile(r"^[+-](0\d|1[0-4]):[0-5]\d$")
_DATE_FORMATS = ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y-%m-%dT%H:%M:%S")


def read_exif(im: Image.Image) -> dict[str, Any]:
    """The EXIF summary of ``im`` (see the module docstring); ``{}`` when there is none."""
    try:
        exif = im.getexif()
    except Exception:
        return {}
    try:
        if not exif:
            return {}
    except Exception:
        return {}
    out: dict[str, Any] = {}
    base = _mapping(lambda: dict(exif.items()))
    sub = _mapping(lambda: dict(exif.get_ifd(_EXIF_IFD).items()))
    gps_ifd = _mapping(lambda: dict(exif.get_ifd(_GPS_IFD).items()))

    for key, value in (
        ("camera_make", base.get(_MAKE)),
        ("camera_model", base.get(_MODEL)),
        ("lens", _lens(sub)),
    ):
        text = _text(value)
        if text:
            out[key] = text

    date_values = [sub.get(_DATETIME_ORIGINAL), sub.get(_DATETIME_DIGITIZED), base.get(_DATETIME)]
    offsets = [sub.get(_OFFSET_TIME_ORIGINAL), sub.get(_OFFSET_TIME_DIGITIZED),
               sub.get(_OFFSET_TIME)]
    if any(v is not None for v in date_values):
        out["taken_at"] = _taken_at(date_values, offsets)

    gps = _gps(gps_ifd)
    if gps:
        out["gps"] = gps

    orientation = _int(base.get(_ORIENTATION))
    if orientation is not None and 1 <= orientation <= 8:
        out["orientation"] = orientation

    iso = _int(sub.get(_ISO))
    if iso is not None and 0 < iso < 10_000_000:
        out["iso"] = iso
    for key, tag, digits in (
        ("f_number", _F_NUMBER, 2),
        ("exposure_time", _EXPOSURE_TIME, 6),
        ("focal_length", _FOCAL_LENGTH, 2),
    ):
        number = _number(sub.get(tag))
        if number is not None and 0 < number < 1e6:
            out[key] = round(number, digits)
    return out


# --------------------------------------------------------------------------- values


def _mapping(read: Any) -> dict[int, Any]:
    try:
        value = read()
    except Exception:
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    """A printable, short string, or None."""
    try:
        if isinstance(value, bytes):
            value = value.split(b"\x00", 1)[0].decode("utf-8", errors="replace")
        if not isinstance(value, str):
            return None
        value = value.split("\x00", 1)[0]
        value = " ".join(_CONTROL.sub(" ", value).split())
        return value[:_MAX_TEXT] or None
    except Exception:
        return None


def _lens(sub: dict[int, Any]) -> Any:
    model = _text(sub.get(_LENS_MODEL))
    make = _text(sub.get(_LENS_MAKE))
    if model and make and not model.lower().startswith(make.lower()):
        return f"{make} {model}"
    return model or None


def _number(value: Any) -> float | None:
    """A finite float from an int, float, IFDRational, Fraction or ``(num, den)`` pair."""
    try:
        if isinstance(value, tuple | list) and len(value) == 1:
            value = value[0]
        if isinstance(value, tuple | list):
            if len(value) != 2:
                return None
            num, den = (_number(v) for v in value)
            if num is None or den is None or den == 0:
                return None
            result = num / den
        elif isinstance(value, bool):
            return None
        elif isinstance(value, int | float | Fraction):
            result = float(value)
        elif hasattr(value, "numerator") and hasattr(value, "denominator"):  # IFDRational
            den = float(value.denominator)
            if den == 0:
                return None
            result = float(value.numerator) / den
        else:
            return None
    except Exception:
        return None
    return result if math.isfinite(result) else None


def _int(value: Any) -> int | None:
    try:
        if isinstance(value, tuple | list) and value:
            value = value[0]
        number = _number(value)
        if number is None or abs(number) > 2**53:
            return None
        return int(number)
    except Exception:
        return None


def _taken_at(values: list[Any], offsets: list[Any]) -> str | None:
    for value, offset in zip(values, offsets, strict=True):
        text = _text(value)
        if not text:
            continue
        for fmt in _DATE_FORMATS:
            try:
                when = datetime.strptime(text[:19], fmt)
            except ValueError:
                continue
            iso = when.isoformat()
            zone = _text(offset)
            if zone and _OFFSET.match(zone):
                iso += zone
            return iso
    return None


def _degrees(value: Any) -> float | None:
    """Degrees from a (d, m, s) triple of rationals, or from a single number."""
    try:
        if isinstance(value, tuple | list):
            if not 1 <= len(value) <= 3:
                return None
            total = 0.0
            for part, weight in zip(value, (1.0, 60.0, 3600.0), strict=False):
                number = _number(part)
                if number is None or number < 0:
                    return None
                total += number / weight
            return total
        return _number(value)
    except Exception:
        return None


def _ref(value: Any) -> str:
    text = _text(value)
    return text[:1].upper() if text else ""


def _gps(ifd: dict[int, Any]) -> dict[str, float] | None:
    if not ifd:
        return None
    lat = _degrees(ifd.get(_GPS_LAT))
    lon = _degrees(ifd.get(_GPS_LON))
    if lat is None or lon is None:
        return None
    lat_ref, lon_ref = _ref(ifd.get(_GPS_LAT_REF)), _ref(ifd.get(_GPS_LON_REF))
    if lat_ref not in ("", "N", "S") or lon_ref not in ("", "E", "W"):
        return None
    if lat_ref == "S":
        lat = -abs(lat)
    if lon_ref == "W":
        lon = -abs(lon)
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    out = {"lat": round(lat, 7), "lon": round(lon, 7)}
    alt = _number(ifd.get(_GPS_ALT))
    if alt is not None and abs(alt) < 100_000:
        ref = ifd.get(_GPS_ALT_REF)
        below = ref in (1, b"\x01", "\x01", "1") or _int(ref) == 1
        out["alt"] = round(-abs(alt) if below else alt, 2)
    return out
