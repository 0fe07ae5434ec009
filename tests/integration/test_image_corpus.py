"""Every image of the shared real-world corpus through canonicalize_isolated.

The corpus (../shared/corpus/images beside the checkout) holds Pillow's, libjpeg-turbo's and
beets' test images: every format Pillow reads, EXIF orientations, CMYK, 16-bit, HEIC/AVIF,
truncated files, fuzzer crash/timeout/OOM cases and decompression bombs. Each file must end
as a correct canonical JPEG or as a MediaError with a documented code, never anything else.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from conveyor.errors import MediaError
from conveyor.media.image import (
    ERROR_CODES,
    SUPPORTED_FORMATS,
    CanonicalImage,
    ImageLimits,
    canonicalize_isolated,
    shutdown_workers,
)

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "images"


#: Per file: 10 s and 1 GiB. The whole corpus takes ~5 s on 2 cores; the budget below is
#: what "bounded" means here (pytest-timeout's 300 s is the hard stop above it).
LIMITS = ImageLimits(timeout_s=10.0, memory_mb=1024)
RUN_BUDGET_S = 120.0

#: Manifest notes that mark a file as a decompression bomb.
BOMB_NOTE = re.compile(r"DECOMPRESSION BOMB|DecompressionBombError")

#: Its bomb is in the *second* frame (test_exception_gif_extents seeks to frame 1); the
#: canonical image is the first frame, which is a valid 100x100 picture.
SECOND_FRAME_BOMB = "pillow/decompression_bomb_extents.gif"

#: Pillow's format name for a refused file, from the extension (for the bomb check).
REFUSED_BY_EXTENSION = {".ico": "ICO", ".icns": "ICNS"}


@dataclass(frozen=True)
class Outcome:
    output: Path
    result: CanonicalImage | None = None
    error: MediaError | None = None
    seconds: float = 0.0

    @property
    def code(self) -> str:
        return "ok" if self.error is None else self.error.code


def _corpus_root() -> Path:
    if not CORPUS.is_dir():
        reason = f"the shared image corpus is missing (expected at {CORPUS})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; CI must provide it")
        pytest.skip(reason)
    return CORPUS


def _corpus_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "MANIFEST.tsv")


def _manifest_notes(root: Path) -> dict[str, str]:
    """relative path (``pillow/x.gif``) -> the manifest's note."""
    notes: dict[str, str] = {}
    for manifest in root.glob("*/MANIFEST.tsv"):
        with manifest.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                notes[f"{manifest.parent.name}/{row['path']}"] = row.get("note") or ""
    return notes


@pytest.fixture(scope="module")
def corpus_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, Outcome], float]]:
    root = _corpus_root()
    out = tmp_path_factory.mktemp("canonical")
    outcomes: dict[str, Outcome] = {}
    started = time.perf_counter()
    try:
        for index, src in enumerate(_corpus_files(root)):
            key = src.relative_to(root).as_posix()
            dst = out / f"{index:04d}.jpg"
            t0 = time.perf_counter()
            try:
                result = canonicalize_isolated(src, dst, LIMITS)
                outcomes[key] = Outcome(dst, result=result, seconds=time.perf_counter() - t0)
            except MediaError as exc:  # any other exception fails the test right here
                outcomes[key] = Outcome(dst, error=exc, seconds=time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        yield outcomes, elapsed
    finally:
        shutdown_workers()


def _check_jpeg(path: Path, result: CanonicalImage, key: str) -> None:
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == result.sha256, key
    assert len(data) == result.size, key
    with Image.open(path) as im:
        assert im.format == "JPEG", key
        assert im.mode == "RGB", key
        assert im.size == (result.width, result.height), key
        assert im.width >= 1 and im.height >= 1, key
        assert max(im.size) <= 4096, key
        im.load()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_corpus_file_is_a_jpeg_or_a_documented_error(
    corpus_run: tuple[dict[str, Outcome], float], capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes, elapsed = corpus_run
    assert len(outcomes) > 600  # the corpus has ~690 images; a near-empty one is a setup bug
    for key, outcome in outcomes.items():
        if outcome.error is not None:
            assert outcome.error.code in ERROR_CODES, (key, outcome.error.code)
            assert outcome.error.message.strip(), key
            assert str(CORPUS) not in outcome.error.message, key  # no server paths
            assert str(CORPUS.parent) not in outcome.error.message, key
            assert not outcome.output.exists(), key
        else:
            assert outcome.result is not None
            assert outcome.result.source_format in SUPPORTED_FORMATS, key
            _check_jpeg(outcome.output, outcome.result, key)
    assert elapsed < RUN_BUDGET_S, f"corpus took {elapsed:.1f} s"

    counts = Counter(outcome.code for outcome in outcomes.values())
    slowest = sorted(outcomes.items(), key=lambda item: -item[1].seconds)[:5]
    with capsys.disabled():
        print(f"\nimage corpus: {len(outcomes)} files in {elapsed:.1f} s")
        for code, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            print(f"  {code:24} {count}")
        print("  slowest: " + ", ".join(f"{k} {o.seconds * 1000:.0f} ms" for k, o in slowest))


def test_exif_orientations_are_applied(
    corpus_run: tuple[dict[str, Outcome], float], tmp_path: Path
) -> None:
    """hopper_orientation_{2..8}.{jpg,webp} all show hopper.jpg upright once converted."""
    outcomes, _ = corpus_run
    pillow = _corpus_root() / "pillow"

    def convert(name: str) -> Image.Image:
        result = canonicalize_isolated(pillow / name, tmp_path / "o.jpg", LIMITS)
        with Image.open(tmp_path / "o.jpg") as im:
            assert im.size == (result.width, result.height)
            return im.convert("RGB")

    def mean_diff(a: Image.Image, b: Image.Image) -> list[float]:
        return list(ImageStat.Stat(ImageChops.difference(a, b)).mean)

    upright = convert("hopper.jpg")
    wrong = min(mean_diff(upright, upright.rotate(90)) + mean_diff(upright, upright.rotate(180)))
    names = [f"hopper_orientation_{n}.{ext}" for n in range(2, 9) for ext in ("jpg", "webp")]
    for name in names:
        assert outcomes[f"pillow/{name}"].code == "ok", name
        converted = convert(name)
        assert converted.size == upright.size, name
        diff = mean_diff(upright, converted)
        # Same picture up to lossy re-encoding (~5/255); a wrong turn differs by ~50+.
        assert max(diff) < 20 < wrong, (name, diff, wrong)

    # Non-square: stored 2x1 with an orientation that turns it into 1x2.
    rect = outcomes["pillow/orientation_rectangle.jpg"].result
    assert rect is not None and (rect.width, rect.height) == (1, 2)
    # TIFF (Pillow applies the orientation while loading): all eight give one picture.
    first = convert("g4_orientation_1.tif")
    for n in range(2, 9):
        other = convert(f"g4_orientation_{n}.tif")
        assert other.size == first.size and max(mean_diff(first, other)) < 5, n


def test_known_good_files_convert(corpus_run: tuple[dict[str, Outcome], float]) -> None:
    outcomes, _ = corpus_run
    expected = {
        "beets/abbey.jpg": ("JPEG", (225, 225)),
        "libjpeg-turbo/testorig.jpg": ("JPEG", (227, 149)),
        "libjpeg-turbo/testimgari.jpg": ("JPEG", (227, 149)),  # arithmetic-coded
        "libjpeg-turbo/monkey16.png": ("PNG", (149, 227)),  # 16-bit RGB + ICC
        "pillow/pil_sample_cmyk.jpg": ("JPEG", (100, 100)),
        "pillow/avif/hopper.heif": ("HEIF", (128, 128)),
        "pillow/avif/hopper.avif": ("AVIF", (128, 128)),
        "pillow/hopper.Lab.tif": ("TIFF", (128, 128)),
        "pillow/frozenpond.mpo": ("MPO", (640, 480)),
    }
    for key, (fmt, size) in expected.items():
        result = outcomes[key].result
        assert result is not None, (key, outcomes[key].error)
        assert result.source_format == fmt, key
        assert (result.width, result.height) == size, key


def test_decompression_bombs_are_stopped(corpus_run: tuple[dict[str, Outcome], float]) -> None:
    outcomes, _ = corpus_run
    notes = _manifest_notes(_corpus_root())
    bombs = sorted(key for key, note in notes.items() if BOMB_NOTE.search(note))
    assert {"pillow/decompression_bomb.gif", "pillow/bmp/b/reallybig.bmp"} <= set(bombs)
    stopped = 0
    for key in bombs:
        outcome = outcomes[key]
        if key == SECOND_FRAME_BOMB:
            assert outcome.code == "ok", key  # first frame only: the bomb is never reached
            continue
        refused = REFUSED_BY_EXTENSION.get(Path(key).suffix.lower())
        if refused is not None and refused not in SUPPORTED_FORMATS:
            # Not an accepted format: refused from its magic bytes, before any decoding.
            assert outcome.code == "image_unsupported", key
            assert outcome.error is not None and refused in outcome.error.message
            continue
        assert outcome.code in {"image_bomb", "image_too_large"}, (key, outcome.code)
        stopped += 1
    assert stopped >= 3  # reallybig.bmp, decompression_bomb.gif, png_decompression_dos.png


def test_hostile_files_fail_cleanly(corpus_run: tuple[dict[str, Outcome], float]) -> None:
    """Fuzzer crash/timeout/OOM cases: a documented error or a JPEG, quickly, no hang."""
    outcomes, _ = corpus_run
    hostile = [k for k in outcomes if re.search(r"/(crash|timeout|oom)[-_]", k)]
    assert len(hostile) > 40
    for key in hostile:
        assert outcomes[key].code in ERROR_CODES | {"ok"}, key
        assert outcomes[key].seconds < LIMITS.timeout_s + 5, key
    for key in ("pillow/truncated_jpeg.jpg", "pillow/truncated_image.png"):
        assert outcomes[key].code == "image_truncated", key


def test_every_error_code_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    assert {code for code in ERROR_CODES if f"`{code}`" not in docs} == set()
