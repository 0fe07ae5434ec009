"""conveyor.media.image: canonical JPEGs from images generated here, and every error path."""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from conveyor.config import Settings
from conveyor.errors import MediaError
from conveyor.media import image as image_mod
from conveyor.media.image import (
    ERROR_CODES,
    MAX_SIDE,
    CanonicalImage,
    ImageLimits,
    canonicalize,
    canonicalize_isolated,
    shutdown_workers,
)

LIMITS = ImageLimits()
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture(scope="module", autouse=True)
def _stop_workers() -> Iterator[None]:
    yield
    shutdown_workers()


def _check_output(dst: Path, result: CanonicalImage) -> Image.Image:
    """The written file is what the result says: a baseline RGB JPEG without metadata."""
    data = dst.read_bytes()
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert not dst.with_suffix(".part").exists()
    with Image.open(dst) as im:
        assert im.format == "JPEG"
        assert im.mode == "RGB"
        assert im.size == (result.width, result.height)
        assert not im.info.get("progressive") and not im.info.get("progression")
        assert "exif" not in im.info and "icc_profile" not in im.info
        assert len(im.getexif()) == 0
        im.load()
        return im.copy()


def _near(pixel: object, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def _code(exc: pytest.ExceptionInfo[MediaError]) -> str:
    assert exc.value.code in ERROR_CODES
    assert exc.value.message
    return exc.value.code


# ------------------------------------------------------------------------- conversions


def test_rgb_png_is_copied_at_its_size(tmp_path: Path) -> None:
    src = tmp_path / "cover.png"
    Image.new("RGB", (300, 200), GREEN).save(src)
    dst = tmp_path / "out" / "cover.jpg"
    result = canonicalize(src, dst, LIMITS)
    im = _check_output(dst, result)
    assert (result.width, result.height) == (300, 200)
    assert (result.source_format, result.source_mode) == ("PNG", "RGB")
    assert _near(im.getpixel((150, 100)), GREEN)


def test_output_is_baseline_quality_90(tmp_path: Path) -> None:
    src = tmp_path / "noise.png"
    Image.effect_noise((256, 256), 60).convert("RGB").save(src)
    dst = tmp_path / "noise.jpg"
    _check_output(dst, canonicalize(src, dst, LIMITS))
    data = dst.read_bytes()
    assert b"\xff\xc0" in data  # SOF0: baseline DCT
    assert b"\xff\xc2" not in data  # SOF2: progressive
    reference = io.BytesIO()
    Image.open(src).save(reference, "JPEG", quality=90)
    with Image.open(dst) as ours, Image.open(reference) as theirs:
        assert ours.quantization == theirs.quantization  # the q90 tables


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    # Pillow writes CMYK JPEGs Adobe-style (inverted), as Photoshop does.
    src = tmp_path / "cmyk.jpg"
    cmyk = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # red
    cmyk.paste((255, 0, 255, 0), (32, 0, 64, 48))  # green on the right
    cmyk.save(src, "JPEG", quality=95)
    dst = tmp_path / "cmyk-out.jpg"
    result = canonicalize(src, dst, LIMITS)
    im = _check_output(dst, result)
    assert (result.source_format, result.source_mode) == ("JPEG", "CMYK")
    assert (result.width, result.height) == (64, 48)
    assert _near(im.getpixel((10, 24)), RED, 60)
    assert _near(im.getpixel((54, 24)), GREEN, 60)


def test_sixteen_bit_greyscale_png_is_scaled(tmp_path: Path) -> None:
    src = tmp_path / "deep.png"
    row = struct.pack("<64H", *([0] * 32 + [4000] * 32))  # 12-bit data, 16-bit container
    Image.frombytes("I;16", (64, 32), row * 32).save(src)
    with Image.open(src) as check:
        assert check.mode.startswith("I") and check.getpixel((40, 5)) == 4000
    dst = tmp_path / "deep.jpg"
    result = canonicalize(src, dst, LIMITS)
    im = _check_output(dst, result)
    assert result.source_mode.startswith("I")
    dark, bright = im.getpixel((8, 16)), im.getpixel((56, 16))
    assert _near(dark, (0, 0, 0), 10)
    expected = round(4000 * 255 / 4095)  # scaled by the 12-bit range its maximum needs
    assert _near(bright, (expected, expected, expected), 10)


def test_float_image_in_unit_range_is_scaled(tmp_path: Path) -> None:
    src = tmp_path / "float.tiff"
    Image.new("F", (16, 16), 0.5).save(src)
    dst = tmp_path / "float.jpg"
    result = canonicalize(src, dst, LIMITS)
    assert result.source_mode == "F"
    assert _near(_check_output(dst, result).getpixel((8, 8)), (128, 128, 128), 6)


def test_palette_with_transparency_goes_onto_white(tmp_path: Path) -> None:
    src = tmp_path / "pal.png"
    pal = Image.new("P", (64, 32), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))  # 0 = red, 1 = blue
    pal.paste(1, (32, 0, 64, 32))
    pal.save(src, transparency=1)  # blue is the transparent index
    dst = tmp_path / "pal.jpg"
    result = canonicalize(src, dst, LIMITS)
    im = _check_output(dst, result)
    assert result.source_mode == "P"
    assert _near(im.getpixel((10, 16)), RED)
    assert _near(im.getpixel((54, 16)), WHITE, 10)


def test_rgba_is_composited_onto_white(tmp_path: Path) -> None:
    src = tmp_path / "alpha.png"
    rgba = Image.new("RGBA", (90, 30), (0, 0, 255, 255))
    rgba.paste((0, 255, 0, 0), (30, 0, 60, 30))  # fully transparent green
    rgba.paste((0, 0, 0, 128), (60, 0, 90, 30))  # half-transparent black
    rgba.save(src)
    dst = tmp_path / "alpha.jpg"
    result = canonicalize(src, dst, LIMITS)
    im = _check_output(dst, result)
    assert result.source_mode == "RGBA"
    assert _near(im.getpixel((15, 15)), BLUE)
    assert _near(im.getpixel((45, 15)), WHITE, 10)
    assert _near(im.getpixel((75, 15)), (127, 127, 127), 10)


def test_one_bit_and_greyscale_alpha(tmp_path: Path) -> None:
    one = tmp_path / "one.png"
    Image.new("1", (20, 10), 1).save(one)
    la = tmp_path / "la.png"
    Image.new("LA", (20, 10), (0, 0)).save(la)  # black but fully transparent
    for src, colour in ((one, WHITE), (la, WHITE)):
        dst = src.with_suffix(".jpg")
        im = _check_output(dst, canonicalize(src, dst, LIMITS))
        assert _near(im.getpixel((10, 5)), colour, 10)


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    src = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (40, 40), colour) for colour in (RED, BLUE, GREEN)]
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=50, loop=0)
    dst = tmp_path / "anim.jpg"
    result = canonicalize(src, dst, LIMITS)
    assert result.source_format == "GIF"
    assert _near(_check_output(dst, result).getpixel((20, 20)), RED)


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    # Stored 80x40 with a red top-left corner; orientation 6 means "rotate 90 degrees
    # clockwise to display", which puts that corner top-right in a 40x80 picture.
    stored = Image.new("RGB", (80, 40), BLUE)
    stored.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "rotated.jpg"
    stored.save(src, "JPEG", quality=95, exif=exif.tobytes())
    dst = tmp_path / "upright.jpg"
    result = canonicalize(src, dst, LIMITS)
    im = _check_output(dst, result)
    assert (result.width, result.height) == (40, 80)
    assert _near(im.getpixel((40 - 6, 6)), RED)  # top-right
    assert _near(im.getpixel((6, 6)), BLUE)  # top-left
    assert _near(im.getpixel((6, 80 - 6)), BLUE)  # bottom-left


def test_large_image_is_downscaled_keeping_aspect(tmp_path: Path) -> None:
    src = tmp_path / "wide.png"
    Image.new("RGB", (5000, 1000), (200, 100, 50)).save(src)
    dst = tmp_path / "wide.jpg"
    result = canonicalize(src, dst, LIMITS)
    _check_output(dst, result)
    assert (result.width, result.height) == (MAX_SIDE, 819)


def test_large_jpeg_uses_draft_and_still_hits_max_side(tmp_path: Path) -> None:
    src = tmp_path / "tall.jpg"
    Image.new("RGB", (2000, 9000), (30, 60, 90)).save(src, quality=80)
    dst = tmp_path / "tall-out.jpg"
    result = canonicalize(src, dst, LIMITS)
    _check_output(dst, result)
    assert (result.width, result.height) == (910, MAX_SIDE)


def test_existing_destination_is_replaced_atomically(tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    Image.new("RGB", (10, 10), RED).save(src)
    dst = tmp_path / "a.jpg"
    dst.write_bytes(b"old")
    result = canonicalize(src, dst, LIMITS)
    _check_output(dst, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.png"]


# ------------------------------------------------------------------------------ errors


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _fails(src: Path, tmp_path: Path, limits: ImageLimits = LIMITS) -> MediaError:
    dst = tmp_path / "never.jpg"
    with pytest.raises(MediaError) as exc:
        canonicalize(src, dst, limits)
    _code(exc)
    assert not dst.exists() and not dst.with_suffix(".part").exists()
    assert str(tmp_path) not in exc.value.message  # the name at most, never the path
    return exc.value


def test_header_declaring_too_many_pixels(tmp_path: Path) -> None:
    src = tmp_path / "huge.png"
    src.write_bytes(_png_header_only(100_000, 100_000))  # 10 gigapixels in 100 bytes
    error = _fails(src, tmp_path)
    assert error.code == "image_too_large"
    assert "100000x100000" in error.message and "huge.png" in error.message


@pytest.mark.parametrize("max_pixels", [22_500, 15_000])
def test_frame_larger_than_its_screen_is_a_bomb(tmp_path: Path, max_pixels: int) -> None:
    # A GIF whose screen says 10x10 but whose frame is 200x200 (40,000 pixels): the header
    # passes, Pillow's own check fires while reading the frame. 22,500 exercises the
    # DecompressionBombWarning (turned into an error), 15,000 the DecompressionBombError.
    data = io.BytesIO()
    Image.new("P", (200, 200), 1).save(data, "GIF")
    gif = bytearray(data.getvalue())
    gif[6:10] = struct.pack("<HH", 10, 10)
    src = tmp_path / "screen.gif"
    src.write_bytes(bytes(gif))
    error = _fails(src, tmp_path, ImageLimits(max_pixels=max_pixels))
    assert error.code == "image_bomb" and "screen.gif" in error.message
    # With room for the frame it is an ordinary picture.
    result = canonicalize(src, tmp_path / "screen.jpg", ImageLimits(max_pixels=50_000))
    assert (result.width, result.height) == (200, 200)


def test_pixel_limit_from_limits(tmp_path: Path) -> None:
    src = tmp_path / "small.png"
    Image.new("RGB", (100, 100), RED).save(src)
    assert _fails(src, tmp_path, ImageLimits(max_pixels=5_000)).code == "image_too_large"


def test_byte_limit(tmp_path: Path) -> None:
    src = tmp_path / "bytes.png"
    Image.effect_noise((64, 64), 50).save(src)
    error = _fails(src, tmp_path, ImageLimits(max_bytes=100))
    assert error.code == "image_too_large" and "MB" in error.message


def test_zero_bytes(tmp_path: Path) -> None:
    src = tmp_path / "empty.jpg"
    src.touch()
    assert _fails(src, tmp_path).code == "image_empty"


def test_random_bytes_are_unsupported(tmp_path: Path) -> None:
    src = tmp_path / "noise.jpg"
    src.write_bytes(b"\x13\x37" + random.Random(0).randbytes(4096))
    error = _fails(src, tmp_path)
    assert error.code == "image_unsupported"
    assert error.message.startswith("the file is not an image Conveyor can read (noise.jpg")


def test_refused_format_is_named(tmp_path: Path) -> None:
    src = tmp_path / "icon.ico"
    Image.new("RGB", (16, 16), RED).save(src)
    error = _fails(src, tmp_path)
    assert error.code == "image_unsupported" and "ICO" in error.message


def test_truncated_jpeg(tmp_path: Path) -> None:
    whole = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(whole, "JPEG", quality=90)
    src = tmp_path / "cut.jpg"
    src.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    error = _fails(src, tmp_path)
    assert error.code == "image_truncated" and "cut.jpg" in error.message


def test_damaged_png_is_corrupt(tmp_path: Path) -> None:
    good = io.BytesIO()
    Image.new("RGB", (32, 32), RED).save(good, "PNG")
    data = bytearray(good.getvalue())
    data[40:60] = b"\xff" * 20  # inside IDAT: zlib stream and CRC broken
    src = tmp_path / "broken.png"
    src.write_bytes(bytes(data))
    assert _fails(src, tmp_path).code in {"image_corrupt", "image_truncated"}


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert _fails(tmp_path / "absent.png", tmp_path).code == "image_unreadable"
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert _fails(folder, tmp_path).code == "image_unreadable"


def test_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert _fails(fifo, tmp_path).code == "image_unreadable"


def test_limits_from_settings() -> None:
    settings = Settings(
        max_upload_bytes=1234, max_image_pixels=5678, image_timeout_s=1.5, image_memory_mb=99
    )
    assert ImageLimits.from_settings(settings) == ImageLimits(1234, 5678, 1.5, 99)


def test_pillow_globals_are_restored(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    src = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(src)
    canonicalize(src, tmp_path / "x.jpg", ImageLimits(max_pixels=1_000))
    assert before == Image.MAX_IMAGE_PIXELS


# --------------------------------------------------------------------------- isolation


def _idle_worker_pid() -> int:
    """White-box: the pid of the worker the next isolated call will use."""
    workers = image_mod._POOL.idle
    assert workers, "expected a warm worker"
    pid = workers[-1].proc.pid
    assert pid is not None
    return pid


def _warm(tmp_path: Path) -> Path:
    src = tmp_path / "warm.png"
    if not src.exists():
        Image.new("RGB", (12, 8), RED).save(src)
    canonicalize_isolated(src, tmp_path / "warm.jpg", LIMITS)
    return src


def test_isolated_matches_in_process(tmp_path: Path) -> None:
    src = tmp_path / "same.png"
    Image.effect_noise((120, 90), 40).convert("RGB").save(src)
    a = canonicalize(src, tmp_path / "a.jpg", LIMITS)
    b = canonicalize_isolated(src, tmp_path / "b.jpg", LIMITS)
    assert a == b
    _check_output(tmp_path / "b.jpg", b)


def test_isolated_errors_come_back_as_media_errors(tmp_path: Path) -> None:
    src = tmp_path / "junk.png"
    src.write_bytes(b"not an image at all" * 10)
    with pytest.raises(MediaError) as exc:
        canonicalize_isolated(src, tmp_path / "junk.jpg", LIMITS)
    assert _code(exc) == "image_unsupported"
    assert str(tmp_path) not in exc.value.message


def test_isolated_worker_is_reused_and_cheap(tmp_path: Path) -> None:
    src = _warm(tmp_path)
    pid = _idle_worker_pid()
    started = time.perf_counter()
    for i in range(20):
        canonicalize_isolated(src, tmp_path / f"r{i}.jpg", LIMITS)
    per_call = (time.perf_counter() - started) / 20
    assert _idle_worker_pid() == pid  # the same process served every call
    assert per_call < 0.1, f"{per_call * 1000:.1f} ms per call"


def test_timeout_kills_the_worker_and_the_next_call_works(tmp_path: Path) -> None:
    src = _warm(tmp_path)
    pid = _idle_worker_pid()
    os.kill(pid, signal.SIGSTOP)  # a decoder stuck forever, deterministically
    started = time.perf_counter()
    with pytest.raises(MediaError) as exc:
        canonicalize_isolated(src, tmp_path / "slow.jpg", ImageLimits(timeout_s=0.5))
    assert _code(exc) == "image_timeout"
    assert time.perf_counter() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    result = canonicalize_isolated(src, tmp_path / "after.jpg", LIMITS)
    _check_output(tmp_path / "after.jpg", result)


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGSEGV, "image_decoder_crashed"), (signal.SIGKILL, "image_too_large")],
)
def test_worker_death_is_reported(tmp_path: Path, sig: int, code: str) -> None:
    src = _warm(tmp_path)
    pid = _idle_worker_pid()
    os.kill(pid, signal.SIGSTOP)  # it takes the request but cannot answer...

    def die() -> None:
        time.sleep(0.2)
        os.kill(pid, sig)  # ...then "crashes" (SIGSEGV) or is OOM-killed (SIGKILL)
        os.kill(pid, signal.SIGCONT)

    killer = threading.Thread(target=die)
    killer.start()
    try:
        with pytest.raises(MediaError) as exc:
            canonicalize_isolated(src, tmp_path / "dead.jpg", ImageLimits(timeout_s=10))
    finally:
        killer.join()
    assert _code(exc) == code
    assert "warm.png" in exc.value.message
    again = tmp_path / "again.jpg"
    _check_output(again, canonicalize_isolated(src, again, LIMITS))


def test_memory_limit(tmp_path: Path) -> None:
    src = tmp_path / "big.png"
    Image.new("RGB", (5000, 5000), (10, 200, 30)).save(src)  # ~100 MB decoded, tiny file
    with pytest.raises(MediaError) as exc:
        canonicalize_isolated(src, tmp_path / "big.jpg", ImageLimits(memory_mb=128))
    assert _code(exc) in {"image_too_large", "image_decoder_crashed"}
    result = canonicalize_isolated(src, tmp_path / "big.jpg", LIMITS)
    assert (result.width, result.height) == (MAX_SIDE, MAX_SIDE)


def test_isolated_calls_from_many_threads(tmp_path: Path) -> None:
    colours = [RED, GREEN, BLUE, (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    sources = []
    for i, colour in enumerate(colours):
        src = tmp_path / f"c{i}.png"
        Image.new("RGB", (50 + i, 40), colour).save(src)
        sources.append((src, colour))
    failures: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for round_ in range(5):
                src, colour = sources[(index + round_) % len(sources)]
                dst = tmp_path / f"t{index}-{round_}.jpg"
                result = canonicalize_isolated(src, dst, LIMITS)
                im = _check_output(dst, result)
                assert result.width == int(src.stem[1:]) + 50
                assert _near(im.getpixel((20, 20)), colour)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
