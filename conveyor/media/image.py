"""Safe image canonicalisation: any accepted upload becomes one baseline RGB JPEG.

Every uploaded cover goes through :func:`canonicalize_isolated` (or, inside an already
isolated worker, :func:`canonicalize`). The output is always the same kind of file: RGB,
baseline JPEG, quality 90, no metadata (EXIF orientation is applied to the pixels first,
ICC colour is converted to sRGB), longest side at most :data:`MAX_SIDE` pixels.

Limits (:class:`ImageLimits`, filled from settings by :meth:`ImageLimits.from_settings`):

``max_bytes`` (``max_upload_bytes``)
    Files larger than this are refused before a byte is decoded (``image_too_large``);
    empty files give ``image_empty``.
``max_pixels`` (``max_image_pixels``)
    The width x height declared by the header is checked before any pixel is decoded
    (``image_too_large``). The same number is Pillow's ``MAX_IMAGE_PIXELS`` while decoding,
    with its ``DecompressionBombWarning`` turned into an error, so frames, tiles and embedded
    sub-images that claim more than the limit give ``image_bomb``.
``timeout_s`` (``image_timeout_s``)
    Wall-clock limit of one isolated call; the worker process is killed when it passes
    (``image_timeout``).
``memory_mb`` (``image_memory_mb``)
    ``RLIMIT_AS`` of the worker process while it decodes. A decoder that runs out gives
    ``image_too_large``; one that crashes the process gives ``image_decoder_crashed``.

Only the formats in :data:`SUPPORTED_FORMATS` are decoded at all (fewer decoders, fewer
attack surfaces); anything else is ``image_unsupported``. ``timeout_s`` and ``memory_mb``
are enforced by :func:`canonicalize_isolated` only: the in-process :func:`canonicalize` can
neither stop nor bound a decoder, so it is meant for code that is already isolated and tests.

Every failure is a :class:`~conveyor.errors.MediaError` whose ``code`` is one of
:data:`ERROR_CODES` and whose message names the file by its name only, never its path.

Isolated calls run in worker processes started through a ``forkserver`` (never a plain
fork of a process that may hold onnxruntime threads), kept in a small pool and reused: a
call costs well under a millisecond on top of the decode; a worker that was killed or
crashed is replaced (~30 ms, this module is preloaded in the forkserver). As with any
non-fork start method, a script that calls it must guard its entry point with
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import hashlib
import io
import multiprocessing
import os
import resource
import signal
import stat
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pillow_heif
from PIL import Image, ImageCms, ImageFile

from conveyor.errors import MediaError, TransientError
from conveyor.media.exif import read_exif

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from conveyor.config import Settings

__all__ = [
    "ERROR_CODES",
    "MAX_SIDE",
    "SUPPORTED_FORMATS",
    "CanonicalImage",
    "ImageLimits",
    "canonicalize",
    "canonicalize_isolated",
    "shutdown_workers",
]

#: Longest side of the canonical JPEG; larger images are downscaled (LANCZOS).
MAX_SIDE = 4096
JPEG_QUALITY = 90

#: Pillow format names that are decoded at all. Cover photos and scans come as these;
#: everything else Pillow knows (EPS runs Ghostscript, PSD/TGA/SGI/PCX/ICO/DDS/BLP/FLI
#: ... are fuzzer favourites) is refused as ``image_unsupported`` without decoding.
SUPPORTED_FORMATS: tuple[str, ...] = (
    "JPEG",
    "MPO",
    "PNG",
    "GIF",
    "WEBP",
    "HEIF",
    "AVIF",
    "TIFF",
    "BMP",
    "JPEG2000",
    "PPM",  # PBM/PGM/PPM/PNM: what scanner tools (scanimage) write
)

#: Every ``MediaError.code`` this module raises.
ERROR_CODES: frozenset[str] = frozenset(
    {
        "image_empty",
        "image_unreadable",
        "image_too_large",
        "image_bomb",
        "image_truncated",
        "image_unsupported",
        "image_corrupt",
        "image_timeout",
        "image_decoder_crashed",
    }
)

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_DETAIL_CHARS = 160

# Registered once, at import: HEIC/HEIF via pillow-heif; AVIF via Pillow's own plugin
# (Pillow >= 11.2), else via pillow-heif where that version still has it.
pillow_heif.register_heif_opener()
Image.init()
if "AVIF" not in Image.OPEN and hasattr(pillow_heif, "register_avif_opener"):
    pillow_heif.register_avif_opener()

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))

# Pillow's bomb limit and the warnings filter are process-global, so in-process decodes
# are serialised. Isolated calls each run in their own single-threaded worker.
_PILLOW_LOCK = threading.RLock()


@dataclass(frozen=True)
class ImageLimits:
    """Limits for one decode; see the module docstring for what each one guards."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 60_000_000
    timeout_s: float = 30.0
    memory_mb: int = 2048

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(
            max_bytes=int(settings.max_upload_bytes),
            max_pixels=int(settings.max_image_pixels),
            timeout_s=float(settings.image_timeout_s),
            memory_mb=int(settings.image_memory_mb),
        )


@dataclass(frozen=True)
class CanonicalImage:
    """What was written: the canonical JPEG's size and hash, and what the source was."""

    width: int
    height: int
    source_format: str
    source_mode: str
    sha256: str
    size: int
    #: the source's EXIF summary (camera, taken_at, gps…; see conveyor.media.exif), read in
    #: the sandbox before the metadata is dropped from the canonical JPEG
    exif: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class _Encoded:
    data: bytes
    width: int
    height: int
    source_format: str
    source_mode: str
    exif: dict[str, Any] = field(default_factory=dict, hash=False)


# --------------------------------------------------------------------------- errors


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def _detail(exc: BaseException, src: Path) -> str:
    """A short, path-free description of a decoder exception."""
    text = str(exc).strip() or type(exc).__name__
    for secret in {str(src), str(src.parent), os.fspath(src.resolve(strict=False))}:
        if secret and secret not in (".", "/"):
            text = text.replace(secret, src.name if secret != str(src.parent) else "")
    text = " ".join(text.split())
    if len(text) > _DETAIL_CHARS:
        text = text[: _DETAIL_CHARS - 1] + "…"
    return f"{type(exc).__name__}: {text}"


class _OutOfMemory(MediaError):
    """A decoder hit the memory limit: the worker that raised it is not reused."""

    code = "image_too_large"


def _not_readable(name: str, why: str) -> MediaError:
    return MediaError(
        f"the file is not an image Conveyor can read ({name}: {why})", code="image_corrupt"
    )


def _classify(exc: BaseException, src: Path) -> MediaError:
    """Turn anything a decoder raised into a MediaError with a documented code."""
    name = src.name
    if isinstance(exc, MediaError):
        return exc
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return MediaError(
            f"the image {name} declares far more pixels than allowed "
            f"(a possible decompression bomb), so it was not decoded ({_detail(exc, src)})",
            code="image_bomb",
        )
    if isinstance(exc, MemoryError):
        return _OutOfMemory(f"the image {name} needs more memory to decode than Conveyor allows")
    text = str(exc).lower()
    if isinstance(exc, ValueError) and "decompressed" in text and "too large" in text:
        # PNG text/ICC chunks that inflate past Pillow's MAX_TEXT_CHUNK/MAX_TEXT_MEMORY.
        return MediaError(
            f"the image {name} holds compressed data that inflates far beyond its size "
            f"(a possible decompression bomb), so it was not decoded ({_detail(exc, src)})",
            code="image_bomb",
        )
    if "truncated" in text or (isinstance(exc, EOFError) and "eof" in text):
        return MediaError(
            f"the image {name} is incomplete: the file ends before the picture does "
            f"(an interrupted upload or copy?) ({_detail(exc, src)})",
            code="image_truncated",
        )
    if any(word in text for word in ("cannot handle", "unsupported", "not supported")):
        # A real variant Pillow has no decoder for (12-bit JPEG, exotic BMP bitfields).
        return MediaError(
            f"the file is not an image Conveyor can read ({name}: it uses a variant of its "
            f"format that Conveyor cannot decode; {_detail(exc, src)})",
            code="image_unsupported",
        )
    return _not_readable(name, f"it is damaged or malformed; {_detail(exc, src)}")


# --------------------------------------------------------------------------- decoding


@contextlib.contextmanager
def _pillow_guard(max_pixels: int) -> Iterator[None]:
    """Pillow's bomb limit = ``max_pixels``, its bomb warning an error, for one decode."""
    with _PILLOW_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with warnings.catch_warnings():
                # Decoder chatter about hostile files ("Tag data larger than file") is not
                # actionable; the bomb warning is the one that must stop the decode.
                warnings.simplefilter("ignore")
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _accepts(accept: Any, prefix: bytes) -> bool:
    if accept is None:
        return False
    try:
        result = accept(prefix)
    except Exception:
        return False
    return bool(result) and not isinstance(result, str)


def _open(fp: IO[bytes], src: Path) -> ImageFile.ImageFile:
    """Identify the file among SUPPORTED_FORMATS only; parse the header, decode nothing.

    Like ``Image.open(fp, formats=...)``, but without its built-in size check so that the
    header's own dimensions give ``image_too_large`` (checked by the caller), and with a
    message naming the format when a file is a known but refused one.
    """
    prefix = fp.read(16)
    damaged: tuple[str, BaseException] | None = None
    for fmt in SUPPORTED_FORMATS:
        entry = Image.OPEN.get(fmt)
        if entry is None:
            continue
        factory, accept = entry
        if not _accepts(accept, prefix):
            continue
        fp.seek(0)
        try:
            # No filename: Pillow would otherwise mmap the path or put it in messages.
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error) as exc:
            damaged = damaged or (fmt, exc)
    if damaged is not None:
        if any(w in str(damaged[1]).lower() for w in ("cannot handle", "unsupported")):
            raise _classify(damaged[1], src)
        raise _not_readable(
            src.name,
            f"it starts like a {damaged[0]} file but its header is damaged; "
            f"{_detail(damaged[1], src)}",
        )
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt not in SUPPORTED_FORMATS and _accepts(accept, prefix):
            raise MediaError(
                f"the file is not an image Conveyor can read ({src.name}: it looks like "
                f"{fmt}, which is not accepted; use {', '.join(SUPPORTED_FORMATS[:6])} "
                "or another common photo format)",
                code="image_unsupported",
            )
    raise MediaError(
        f"the file is not an image Conveyor can read ({src.name}: unrecognised format; "
        f"accepted formats are {', '.join(SUPPORTED_FORMATS)})",
        code="image_unsupported",
    )


def _check_pixels(size: tuple[int, int], limits: ImageLimits, name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise _not_readable(name, f"its header declares an empty {width}x{height} picture")
    if width * height > limits.max_pixels:
        raise MediaError(
            f"the image {name} is {width}x{height} pixels "
            f"({width * height / 1e6:.1f} megapixels); the limit is "
            f"{limits.max_pixels / 1e6:.1f} megapixels",
            code="image_too_large",
        )


def _target_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    longest = max(width, height)
    if longest <= MAX_SIDE:
        return size
    scale = MAX_SIDE / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1-8); broken EXIF counts as 'no orientation', never as an error."""
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:
        return 1


_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _icc_profile(icc: bytes | None) -> ImageCms.ImageCmsProfile | None:
    if not icc:
        return None
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except Exception:  # a broken profile is ignored, not fatal
        return None


def _icc_to_srgb(
    im: Image.Image, profile: ImageCms.ImageCmsProfile | None, colour_space: str
) -> Image.Image | None:
    """``im`` converted to sRGB through its embedded profile, or None if that can't be done."""
    if profile is None or profile.profile.xcolor_space.strip() != colour_space:
        return None
    try:
        description = profile.profile.profile_description or ""
        if colour_space == "RGB" and "srgb" in description.lower():
            return None  # already sRGB: skip a no-op transform
        out = ImageCms.profileToProfile(im, profile, _SRGB, outputMode="RGB")
    except Exception:
        return None
    return out if isinstance(out, Image.Image) else None


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """I;16*, I and F -> L.

    Integers are scaled by the smallest bit depth that holds their actual maximum (so
    12-bit data in a 16-bit container uses the full range, and a dark 16-bit image stays
    dark); floats in 0..1 are scaled by 255, in 0..255 kept, larger ones scaled by their maximum,
    and ones with negative values stretched from their minimum to their maximum.
    Out-of-range values are clipped, NaN becomes 0.
    """
    if im.mode == "F":
        low, high = (float(v) for v in im.getextrema())  # type: ignore[arg-type]
        if low >= 0.0 and high <= 1.0:
            scale, offset = 255.0, 0.0
        elif low >= 0.0 and high <= 255.0:
            scale, offset = 1.0, 0.0
        elif low >= 0.0:
            scale, offset = 255.0 / high, 0.0
        elif high > low:
            scale = 255.0 / (high - low)
            offset = -low * scale
        else:
            scale, offset = 0.0, 0.0
        return im.point(lambda v: v * scale + offset).convert("L")  # convert clips, NaN -> 0
    wide = im if im.mode == "I" else im.convert("I")
    extrema = wide.getextrema()
    peak = extrema[1] if isinstance(extrema[1], int | float) else 255
    bits = max(8, int(peak).bit_length())
    factor = 255.0 / float((1 << bits) - 1)
    return wide.point(lambda v: v * factor).convert("L")  # negatives clip to 0


def _flatten(im: Image.Image) -> Image.Image:
    """Any alpha (or transparency key) composited onto white."""
    if im.mode == "La":
        im = im.convert("LA")
    rgba = im.convert("RGBA")
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return background


def _to_rgb(im: Image.Image, profile: ImageCms.ImageCmsProfile | None) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _ALPHA_MODES or "transparency" in im.info:
        if mode.startswith("I") or mode == "F":
            return _high_bit_depth_to_l(im).convert("RGB")
        return _flatten(im)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_bit_depth_to_l(im).convert("RGB")
    if mode == "CMYK":
        # Pillow already un-inverts Adobe CMYK JPEGs; the profile gives the real colours.
        return _icc_to_srgb(im, profile, "CMYK") or im.convert("RGB")
    if mode == "LAB":
        lab = ImageCms.createProfile("LAB")
        transform = ImageCms.buildTransform(lab, _SRGB, "LAB", "RGB")
        out = ImageCms.applyTransform(im, transform)
        if isinstance(out, Image.Image):
            return out
    return im.convert("RGB")


def _decode(fp: IO[bytes], src: Path, limits: ImageLimits) -> _Encoded:
    im = _open(fp, src)
    source_format = str(im.format or "unknown")
    source_mode = im.mode
    _check_pixels(im.size, limits, src.name)
    if source_format in ("JPEG", "MPO"):
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the result is only downscaled.
        target = _target_size(im.size)
        if target != im.size:
            im.draft(None, target)
    im.load()  # first frame only for GIF/APNG/TIFF/MPO: we never seek
    _check_pixels(im.size, limits, src.name)  # some plugins only know the size once loaded
    profile = _icc_profile(im.info.get("icc_profile"))
    orientation = _orientation(im)
    exif = read_exif(im)  # never raises; hostile tags are dropped

    rgb = _to_rgb(im, profile)
    target = _target_size(rgb.size)
    if target != rgb.size:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if im.mode in ("RGB", "RGBA", "RGBX", "P", "PA"):
        rgb = _icc_to_srgb(rgb, profile, "RGB") or rgb
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    if rgb.mode != "RGB":
        rgb = rgb.convert("RGB")
    rgb.info = {}  # nothing from the source reaches the output

    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return _Encoded(out.getvalue(), rgb.width, rgb.height, source_format, source_mode, exif)


def _encode(src: Path, limits: ImageLimits) -> _Encoded:
    """Open ``src`` safely and return the canonical JPEG bytes; raises MediaError only."""
    name = src.name
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore it.
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise MediaError(
            f"the file {name} could not be read ({type(exc).__name__})", code="image_unreadable"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise MediaError(f"{name} is not a regular file", code="image_unreadable")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as fp:
        if info.st_size == 0:
            raise MediaError(f"the file {name} is empty (0 bytes)", code="image_empty")
        if info.st_size > limits.max_bytes:
            raise MediaError(
                f"the file {name} is {_mb(info.st_size)}; the limit is {_mb(limits.max_bytes)}",
                code="image_too_large",
            )
        with _pillow_guard(limits.max_pixels):
            try:
                return _decode(fp, src, limits)
            except MediaError:
                raise
            except Exception as exc:  # decoders raise anything on hostile input
                raise _classify(exc, src) from None


def _write_atomic(dst: Path, data: bytes) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_suffix(".part")
    try:
        with open(part, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise


def _finish(dst: Path, encoded: _Encoded) -> CanonicalImage:
    _write_atomic(dst, encoded.data)
    return CanonicalImage(
        width=encoded.width,
        height=encoded.height,
        source_format=encoded.source_format,
        source_mode=encoded.source_mode,
        sha256=hashlib.sha256(encoded.data).hexdigest(),
        size=len(encoded.data),
        exif=encoded.exif,
    )


def canonicalize(src: Path, dst: Path, limits: ImageLimits) -> CanonicalImage:
    """In-process: open safely, apply EXIF orientation, convert to RGB, write canonical JPEG
    atomically (write to dst.with_suffix('.part') then os.replace). Raises MediaError.

    Enforces ``max_bytes`` and ``max_pixels`` but not ``timeout_s``/``memory_mb``; use
    :func:`canonicalize_isolated` for untrusted files outside an isolated worker.
    """
    return _finish(Path(dst), _encode(Path(src), limits))


# --------------------------------------------------------------------------- isolation

_MP = multiprocessing.get_context("forkserver")
_STARTUP_TIMEOUT_S = 60.0
_DECODER_THREADS = max(1, min(4, os.cpu_count() or 1))
_MAX_IDLE = max(2, os.cpu_count() or 1)
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}


_forkserver_configured = False
_forkserver_lock = threading.Lock()


def _configure_forkserver() -> None:
    """Preload this module in the forkserver (once, before it starts): a replacement
    worker then forks with Pillow already imported (~30 ms instead of ~350 ms)."""
    global _forkserver_configured
    with _forkserver_lock:
        if _forkserver_configured:
            return
        from multiprocessing import forkserver

        current = getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", None)
        modules = list(current) if isinstance(current, list) else ["__main__"]
        if __name__ not in modules:
            modules.append(__name__)
        _MP.set_forkserver_preload(modules)  # no effect if the forkserver already runs
        _forkserver_configured = True


def _limit_malloc_arenas() -> None:
    """Fewer glibc arenas: each thread arena reserves 64 MB of address space (RLIMIT_AS)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX


@contextlib.contextmanager
def _memory_limit(memory_mb: int) -> Iterator[None]:
    """RLIMIT_AS (soft) = memory_mb while decoding; lifted again to send the reply."""
    previous, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = max(64, int(memory_mb)) * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (previous, hard))


def _worker_main(conn: Connection) -> None:
    """The isolated worker: one request at a time, forever, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    with contextlib.suppress(Exception):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dumps of hostile input
    _limit_malloc_arenas()
    with contextlib.suppress(Exception):
        from PIL import AvifImagePlugin

        AvifImagePlugin.DEFAULT_MAX_THREADS = _DECODER_THREADS
    pillow_heif.options.DECODE_THREADS = _DECODER_THREADS
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if request is None:
            return
        src, limits = request
        recycle = False
        try:
            with _memory_limit(limits.memory_mb):
                encoded = _encode(Path(src), limits)
            reply: tuple[Any, ...] = ("ok", encoded)
        except MediaError as exc:
            recycle = isinstance(exc, _OutOfMemory)
            reply = ("error", exc.code, exc.message)
        except MemoryError:
            recycle = True
            reply = (
                "error",
                "image_too_large",
                f"the image {Path(src).name} needs more memory to decode than Conveyor allows",
            )
        except Exception as exc:  # pragma: no cover - _encode maps everything
            recycle = True
            reply = (
                "error",
                "image_corrupt",
                f"the file is not an image Conveyor can "
                f"read ({Path(src).name}: {type(exc).__name__})",
            )
        # The parent must know before its next call whether this worker is going away.
        conn.send((*reply, recycle))
        if recycle:
            return  # a heap that ran out is not trusted with the next file


class _WorkerGone(Exception):
    """An idle worker died before it got the request (not the file's fault): use another."""


class _Worker:
    """A forkserver child process, reused across calls, owned by one call at a time."""

    def __init__(self) -> None:
        _configure_forkserver()
        parent_conn, child_conn = _MP.Pipe(duplex=True)
        self.proc: BaseProcess = _MP.Process(
            target=_worker_main,
            args=(child_conn,),
            name="conveyor-image-worker",
            daemon=True,
        )
        self.conn = parent_conn
        self.retiring = False  # the worker said it exits after its last reply
        try:
            self.proc.start()
        except Exception as exc:
            parent_conn.close()
            raise TransientError(
                f"could not start the image worker ({type(exc).__name__})",
                code="image_worker_unavailable",
            ) from exc
        finally:
            child_conn.close()
        try:
            ready = self.conn.poll(_STARTUP_TIMEOUT_S) and self.conn.recv()[0] == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise TransientError("the image worker did not start", code="image_worker_unavailable")

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> int | None:
        with contextlib.suppress(Exception):
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()
        return self.proc.exitcode

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        self.proc.join(1)
        if self.proc.is_alive():
            self.kill()
        self.conn.close()

    def run(self, src: Path, limits: ImageLimits) -> _Encoded:
        """One request. Kills the worker and raises MediaError on timeout or death."""
        name = src.name
        try:
            self.conn.send((os.fspath(src), limits))
        except OSError:
            self.kill()
            raise _WorkerGone from None
        if not self.conn.poll(limits.timeout_s):
            self.kill()
            raise MediaError(
                f"decoding the image {name} took longer than {limits.timeout_s:g} s "
                "and was stopped",
                code="image_timeout",
            )
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            raise self._death(name) from None
        self.retiring = bool(reply[-1])
        if reply[0] == "ok":
            encoded = reply[1]
            assert isinstance(encoded, _Encoded)
            return encoded
        _, code, message, _ = reply
        raise MediaError(str(message), code=str(code))

    def _death(self, name: str) -> MediaError:
        code = self.proc.exitcode
        if code is None:
            code = self.kill()
        if code is not None and code < 0 and -code == signal.SIGKILL:
            # Nobody here killed it: the kernel's OOM killer did.
            return MediaError(
                f"the image {name} needs more memory to decode than Conveyor allows",
                code="image_too_large",
            )
        if code is not None and code < 0:
            try:
                what = signal.Signals(-code).name
            except ValueError:
                what = f"signal {-code}"
            kind = "crashed" if -code in _CRASH_SIGNALS else "was killed"
        else:
            what, kind = f"exit status {code}", "stopped"
        return MediaError(
            f"the image decoder {kind} on {name} ({what}); the file is probably "
            "damaged or built to attack decoders",
            code="image_decoder_crashed",
        )


class _Pool:
    """Idle workers, shared by the threads of this process (one worker per running call)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []

    def acquire(self) -> _Worker:
        with self.lock:
            while self.idle:
                worker = self.idle.pop()
                if worker.alive():
                    return worker
                worker.kill()
        return _Worker()

    def release(self, worker: _Worker) -> None:
        with self.lock:
            if len(self.idle) < _MAX_IDLE and not worker.retiring and worker.alive():
                self.idle.append(worker)
                return
        worker.close()

    def shutdown(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for worker in idle:
            worker.close()


_POOL = _Pool()


def _forget_pool_after_fork() -> None:
    # A forked child must not talk to (or kill) its parent's workers.
    global _POOL
    _POOL = _Pool()


os.register_at_fork(after_in_child=_forget_pool_after_fork)
atexit.register(lambda: _POOL.shutdown())


def shutdown_workers() -> None:
    """Stop the idle isolated workers (they are also stopped at exit)."""
    _POOL.shutdown()


def canonicalize_isolated(src: Path, dst: Path, limits: ImageLimits) -> CanonicalImage:
    """Same, but runs in a child process with RLIMIT_AS = memory_mb and a wall-clock
    timeout; the child is killed on timeout (MediaError code 'image_timeout'); a child that
    dies (segfault, MemoryError, OOM) gives MediaError code 'image_decoder_crashed' or
    'image_too_large'. Never hangs, never takes down the caller.

    Workers come from a small per-process pool of forkserver children and are reused, so a
    call costs a pipe round trip plus the decode; a killed or crashed worker is replaced.
    Safe to call from several threads at once (each call has a worker to itself).
    """
    src, dst = Path(src).absolute(), Path(dst)
    for attempt in range(2):
        worker = _POOL.acquire()
        try:
            encoded = worker.run(src, limits)
        except _WorkerGone:
            if attempt:
                raise TransientError(
                    "the image worker keeps dying before it gets work",
                    code="image_worker_unavailable",
                ) from None
            continue
        except MediaError:
            _POOL.release(worker)  # dropped by release() if it was killed
            raise
        except BaseException:
            worker.kill()  # e.g. KeyboardInterrupt mid-call: the worker's state is unknown
            raise
        _POOL.release(worker)
        return _finish(dst, encoded)
    raise AssertionError("unreachable")  # pragma: no cover
