"""conveyor.media.hashes and conveyor.media.exif: hashes, quality measures, EXIF summaries."""

from __future__ import annotations

import io
import json
import random
import struct
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFilter
from PIL.TiffImagePlugin import IFDRational

from conveyor.media import hashes
from conveyor.media.exif import read_exif
from conveyor.media.image import ImageLimits, canonicalize

# --------------------------------------------------------------------------- images


def scene(seed: int = 1, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like synthetic image: a gradient background, then shapes; all from ``seed``."""
    rng = random.Random(seed)
    width, height = size
    im = Image.new("RGB", size)
    draw = ImageDraw.Draw(im)
    first = [rng.randrange(256) for _ in range(3)]
    last = [rng.randrange(256) for _ in range(3)]
    vertical = rng.random() < 0.5
    steps = height if vertical else width
    for i in range(steps):
        t = i / steps
        colour = tuple(int(a + (b - a) * t) for a, b in zip(first, last, strict=True))
        draw.line([(0, i), (width, i)] if vertical else [(i, 0), (i, height)], fill=colour)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(20, 120), y0 + rng.randrange(20, 90)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape([x0, y0, x1, y1], fill=colour)
    return im


def recompressed(im: Image.Image, size: tuple[int, int], quality: int) -> Image.Image:
    out = io.BytesIO()
    im.resize(size, Image.Resampling.BILINEAR).save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue()))


def jpeg_with_exif(exif: Image.Exif | bytes, size: tuple[int, int] = (64, 48)) -> Image.Image:
    out = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(out, "JPEG", exif=exif)
    return Image.open(io.BytesIO(out.getvalue()))


# --------------------------------------------------------------------------- hashes


@pytest.mark.parametrize("fn", [hashes.ahash, hashes.dhash, hashes.phash])
def test_hash_is_16_hex_and_identical_image_has_distance_0(fn: Any) -> None:
    a = scene(1)
    h = fn(a)
    assert len(h) == 16 and int(h, 16) >= 0 and h == h.lower()
    assert hashes.hamming(h, fn(a.copy())) == 0
    assert fn(a.convert("RGBA")) == h  # mode does not matter


@pytest.mark.parametrize(("fn", "near", "far"), [
    (hashes.ahash, 6, 14),
    (hashes.dhash, 6, 20),
    (hashes.phash, 6, 16),
])
def test_resized_recompressed_copy_is_near_and_other_image_is_far(
    fn: Any, near: int, far: int
) -> None:
    a = scene(1, (640, 480))
    copy = recompressed(a, (200, 150), quality=35)
    others = [scene(seed) for seed in range(2, 12)]
    assert hashes.hamming(fn(a), fn(copy)) <= near
    for other in others:
        assert hashes.hamming(fn(a), fn(other)) >= far, fn.__name__


def test_phash_ignores_brightness_shift() -> None:
    a = scene(7)
    brighter = Image.eval(a, lambda v: min(255, v + 25))
    assert hashes.hamming(hashes.phash(a), hashes.phash(brighter)) <= 6


def test_hamming() -> None:
    assert hashes.hamming("0" * 16, "f" * 16) == 64
    assert hashes.hamming("00000000000000ff", "000000000000000f") == 4
    assert hashes.hamming("ABCDEF0123456789", "abcdef0123456789") == 0
    with pytest.raises(ValueError, match="different lengths"):
        hashes.hamming("00", "000")
    with pytest.raises(ValueError, match="hexadecimal"):
        hashes.hamming("zz", "00")


def test_tiny_and_flat_images_hash_without_error() -> None:
    for im in (Image.new("RGB", (1, 1), "red"), Image.new("L", (3, 500), 0)):
        assert len(hashes.phash(im)) == len(hashes.dhash(im)) == len(hashes.ahash(im)) == 16
        assert hashes.sharpness(im)["score"] == 0.0


# --------------------------------------------------------------------------- quality


def test_blurred_image_is_less_sharp() -> None:
    sharp = scene(3, (800, 600))
    blurred = sharp.filter(ImageFilter.GaussianBlur(6))
    s, b = hashes.sharpness(sharp), hashes.sharpness(blurred)
    assert 0.0 <= b["score"] < s["score"] <= 1.0
    assert b["laplacian_var"] < s["laplacian_var"] / 5


def test_exposure_labels() -> None:
    dark = hashes.exposure(Image.new("RGB", (100, 100), (12, 10, 8)))
    bright = hashes.exposure(Image.new("RGB", (100, 100), (250, 252, 253)))
    normal = hashes.exposure(scene(2))
    assert dark["label"] == "under" and dark["mean"] < 0.1
    assert bright["label"] == "over" and bright["highlights_clipped"] > 0.9
    assert normal["label"] == "ok"
    assert normal["score"] > dark["score"] and normal["score"] > bright["score"]
    crushed = Image.new("L", (100, 100), 128)
    ImageDraw.Draw(crushed).rectangle([0, 0, 99, 59], fill=0)  # 60 % pure black
    assert hashes.exposure(crushed)["label"] == "under"
    assert hashes.exposure(crushed)["shadows_clipped"] == pytest.approx(0.6, abs=0.02)


def test_dominant_colours_of_a_two_colour_image() -> None:
    im = Image.new("RGB", (200, 100), (255, 0, 0))
    ImageDraw.Draw(im).rectangle([0, 0, 199, 29], fill=(0, 0, 255))  # 30 % blue
    colours = hashes.dominant_colors(im)
    assert [c["hex"] for c in colours] == ["#ff0000", "#0000ff"]
    assert colours[0]["fraction"] == pytest.approx(0.7, abs=0.03)
    assert colours[1]["fraction"] == pytest.approx(0.3, abs=0.03)
    assert hashes.dominant_colors(im) == colours  # deterministic


def test_dominant_colours_are_at_most_five_and_sum_to_one() -> None:
    im = Image.effect_noise((300, 300), 80).convert("RGB")
    colours = hashes.dominant_colors(scene(5))
    assert 1 <= len(colours) <= 5
    assert sum(c["fraction"] for c in colours) <= 1.0001
    assert colours == sorted(colours, key=lambda c: -c["fraction"])
    assert hashes.dominant_colors(im) == hashes.dominant_colors(im.copy())
    json.dumps(colours)


# --------------------------------------------------------------------------- EXIF


def good_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS R5\x00\x00"
    exif[0x0112] = 6
    exif[0x0132] = "2023:01:02 03:04:05"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2024:05:01 14:03:22"
    sub[0x9011] = "+02:00"
    sub[0x829A] = IFDRational(1, 250)
    sub[0x829D] = IFDRational(28, 10)
    sub[0x8827] = 400
    sub[0x920A] = IFDRational(50, 1)
    sub[0xA434] = "RF 50mm F1.2"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (IFDRational(52, 1), IFDRational(31, 1), IFDRational(1234, 100))
    gps[3] = "W"
    gps[4] = (IFDRational(0, 1), IFDRational(7, 1), IFDRational(3996, 100))
    gps[5] = b"\x01"
    gps[6] = IFDRational(355, 10)
    return exif


def test_exif_from_a_jpeg_written_with_pillow() -> None:
    info = read_exif(jpeg_with_exif(good_exif()))
    assert info == {
        "camera_make": "Canon",
        "camera_model": "Canon EOS R5",
        "lens": "RF 50mm F1.2",
        "taken_at": "2024-05-01T14:03:22+02:00",
        "gps": {"lat": pytest.approx(52.520094, abs=1e-5),
                "lon": pytest.approx(-0.127767, abs=1e-5), "alt": -35.5},
        "orientation": 6,
        "iso": 400,
        "f_number": 2.8,
        "exposure_time": 0.004,
        "focal_length": 50.0,
    }
    json.dumps(info)


def test_exif_falls_back_to_datetime_and_southern_eastern_gps() -> None:
    exif = Image.Exif()
    exif[0x0132] = "2019:12:31 23:59:59"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "S", (IFDRational(33, 1), IFDRational(52, 1), IFDRational(0, 1))
    gps[3], gps[4] = "E", (IFDRational(151, 1), IFDRational(12, 1), IFDRational(36, 1))
    info = read_exif(jpeg_with_exif(exif))
    assert info["taken_at"] == "2019-12-31T23:59:59"
    assert info["gps"]["lat"] == pytest.approx(-33.866667, abs=1e-5)
    assert info["gps"]["lon"] == pytest.approx(151.21, abs=1e-5)
    assert "alt" not in info["gps"]


def test_no_exif_is_an_empty_dict() -> None:
    assert read_exif(Image.new("RGB", (4, 4))) == {}
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, "PNG")
    assert read_exif(Image.open(io.BytesIO(out.getvalue()))) == {}


# Raw TIFF/EXIF blocks, because Pillow refuses to write most of the garbage cameras and
# fuzzers produce. Entry: (tag, type, count, payload bytes); payloads > 4 bytes go after
# the IFD. Types: 2 ASCII, 3 SHORT, 4 LONG, 5 RATIONAL, 7 UNDEFINED, 10 SRATIONAL.

Entry = tuple[int, int, int, bytes]


def _ifd(entries: list[Entry], offset: int, trailing_next: int = 0) -> bytes:
    head = struct.pack("<H", len(entries))
    data_start = offset + 2 + 12 * len(entries) + 4
    body, extra = b"", b""
    for tag, typ, count, payload in sorted(entries):
        if len(payload) <= 4:
            body += struct.pack("<HHI", tag, typ, count) + payload.ljust(4, b"\x00")
        else:
            body += struct.pack("<HHII", tag, typ, count, data_start + len(extra))
            extra += payload + (b"\x00" if len(payload) % 2 else b"")
    return head + body + struct.pack("<I", trailing_next) + extra


def raw_exif(
    ifd0: list[Entry], exif_ifd: list[Entry] | None = None, gps: list[Entry] | None = None
) -> bytes:
    """``Exif\\0\\0`` + little-endian TIFF with IFD0 and optional Exif / GPS sub-IFDs."""
    subs = [(tag, entries) for tag, entries in ((0x8769, exif_ifd), (0x8825, gps)) if entries]
    # IFD0's size does not depend on the pointer values: lay it out with zeros first
    pos = 8 + len(_ifd([*ifd0, *((tag, 4, 1, bytes(4)) for tag, _ in subs)], 8))
    pointers: list[Entry] = []
    blocks: list[bytes] = []
    for tag, entries in subs:
        block = _ifd(list(entries or []), pos)
        pointers.append((tag, 4, 1, struct.pack("<I", pos)))
        blocks.append(block)
        pos += len(block)
    tiff = b"II*\x00" + struct.pack("<I", 8) + _ifd([*ifd0, *pointers], 8) + b"".join(blocks)
    return b"Exif\x00\x00" + tiff


def ascii_(tag: int, text: bytes) -> Entry:
    return (tag, 2, len(text), text)


def rational(tag: int, *pairs: tuple[int, int], signed: bool = False) -> Entry:
    fmt = "<ii" if signed else "<II"
    return (tag, 10 if signed else 5, len(pairs), b"".join(struct.pack(fmt, *p) for p in pairs))


def short(tag: int, value: int) -> Entry:
    return (tag, 3, 1, struct.pack("<H", value))


def test_raw_exif_builder_round_trips() -> None:
    data = raw_exif(
        [ascii_(0x010F, b"Nikon\x00"), short(0x0112, 3)],
        [ascii_(0x9003, b"2021:07:04 10:00:00\x00"), rational(0x829D, (56, 10))],
        [ascii_(1, b"N\x00"), rational(2, (10, 1), (30, 1), (0, 1)),
         ascii_(3, b"E\x00"), rational(4, (20, 1), (0, 1), (0, 1))],
    )
    info = read_exif(jpeg_with_exif(data))
    assert info["camera_make"] == "Nikon"
    assert info["orientation"] == 3
    assert info["taken_at"] == "2021-07-04T10:00:00"
    assert info["f_number"] == 5.6
    assert info["gps"] == {"lat": 10.5, "lon": 20.0}


HOSTILE: dict[str, bytes] = {
    "zero denominators": raw_exif(
        [short(0x0112, 1)],
        [rational(0x829A, (1, 0)), rational(0x829D, (0, 0)), rational(0x920A, (5, 0))],
        [ascii_(1, b"N\x00"), rational(2, (1, 0), (2, 0), (3, 0)),
         ascii_(3, b"E\x00"), rational(4, (1, 1), (1, 1), (1, 1)), rational(6, (7, 0))],
    ),
    "wrong types": raw_exif(
        [ascii_(0x0112, b"sideways\x00"), rational(0x010F, (1, 2)),
         (0x0110, 7, 5, b"\xff\xfe\x00ab")],
        [ascii_(0x8827, b"lots\x00"), ascii_(0x829A, b"1/250\x00"),
         ascii_(0x9003, b"yesterday\x00")],
        [short(1, 78), ascii_(2, b"52.1\x00"), rational(3, (1, 1)),
         rational(4, (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1))],
    ),
    "out of range": raw_exif(
        [short(0x0112, 42), ascii_(0x0132, b"0000:00:00 00:00:00\x00")],
        [rational(0x829A, (4_000_000_000, 1)), rational(0x829D, (-5, 1), signed=True)],
        [ascii_(1, b"Q\x00"), rational(2, (95, 1), (0, 1), (0, 1)),
         ascii_(3, b"W\x00"), rational(4, (400, 1), (0, 1), (0, 1))],
    ),
    "control characters": raw_exif(
        [ascii_(0x010F, b"Ev\x01il\x1b[31m\x7f" + b"A" * 500 + b"\x00"),
         ascii_(0x0110, b"\x00\x00\x00")],
        [ascii_(0x9003, b"2024:13:45 25:61:61\x00"), ascii_(0x9011, b"+99:99\x00")],
    ),
    "dangling offsets": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x03\x00"
    + struct.pack("<HHII", 0x010F, 2, 5000, 0x7FFFFFF0)
    + struct.pack("<HHII", 0x8769, 4, 1, 0xFFFFFF00)
    + struct.pack("<HHII", 0x8825, 4, 1, 8)  # GPS IFD pointing back at IFD0
    + b"\x00\x00\x00\x00",
    "truncated": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff\x0f\x01\x02",
    "not tiff": b"Exif\x00\x00this is not a tiff header at all",
    "big endian nonsense": b"Exif\x00\x00MM\x00*" + bytes(range(256)) * 4,
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow: "Corrupt EXIF data"
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_exif_never_raises_and_is_json_safe(name: str) -> None:
    info = read_exif(jpeg_with_exif(HOSTILE[name]))
    assert isinstance(info, dict)
    json.dumps(info, allow_nan=False)
    for key in ("camera_make", "camera_model", "lens"):
        if key in info:
            value = info[key]
            assert isinstance(value, str) and 0 < len(value) <= 64
            assert not any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in value)
    if "gps" in info:
        assert -90 <= info["gps"]["lat"] <= 90 and -180 <= info["gps"]["lon"] <= 180
    if "orientation" in info:
        assert 1 <= info["orientation"] <= 8
    for key in ("f_number", "exposure_time", "focal_length"):
        assert key not in info or 0 < info[key] < 1e6


def test_hostile_values_are_dropped_not_guessed() -> None:
    zero = read_exif(jpeg_with_exif(HOSTILE["zero denominators"]))
    assert "gps" not in zero and "exposure_time" not in zero and "f_number" not in zero
    ranges = read_exif(jpeg_with_exif(HOSTILE["out of range"]))
    assert ranges.get("taken_at", None) is None and "taken_at" in ranges
    assert "orientation" not in ranges and "gps" not in ranges and "f_number" not in ranges
    control = read_exif(jpeg_with_exif(HOSTILE["control characters"]))
    assert control["camera_make"].startswith("Ev il [31m")
    assert "camera_model" not in control
    assert control["taken_at"] is None


def test_read_exif_survives_an_image_whose_getexif_raises() -> None:
    class Broken(Image.Image):
        def getexif(self) -> Image.Exif:
            raise RuntimeError("boom")

    assert read_exif(Broken()) == {}


def test_canonicalize_carries_exif_out_of_the_decoder(tmp_path: Any) -> None:
    src = tmp_path / "in.jpg"
    Image.new("RGB", (60, 40), (10, 200, 10)).save(src, "JPEG", exif=good_exif())
    result = canonicalize(src, tmp_path / "out.jpg", ImageLimits())
    assert result.exif["camera_model"] == "Canon EOS R5"
    assert result.exif["orientation"] == 6
    assert (result.width, result.height) == (40, 60)  # orientation 6 applied
    with Image.open(tmp_path / "out.jpg") as out:
        assert len(out.getexif()) == 0  # the canonical JPEG still carries no metadata
    hostile = tmp_path / "hostile.jpg"
    Image.new("RGB", (30, 20)).save(hostile, "JPEG", exif=HOSTILE["wrong types"])
    assert isinstance(canonicalize(hostile, tmp_path / "h.jpg", ImageLimits()).exif, dict)
