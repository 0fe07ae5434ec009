"""The photos pipeline's pure helpers: JSON safety, near-duplicates, error messages for
people, and how any provider's results are shown on the detail page."""

from __future__ import annotations

import math

from conveyor.errors import MediaError, PermanentError, TransientError
from conveyor.pipelines.photos.analysis import (
    json_safe,
    near_duplicates,
    phash_of,
    public_error,
)
from conveyor.pipelines.photos.pages import display_results, exif_rows
from conveyor.pipelines.photos.service import clean_content_type


def test_json_safe_drops_what_databases_refuse() -> None:
    value = {"a\x00": "x\x00y", 1: [math.nan, math.inf, 1.5, b"b\x00c", (1, 2), {3}],
             "n": None, "t": True}
    assert json_safe(value) == {"a": "xy", "1": [None, None, 1.5, "bc", [1, 2], [3]],
                                "n": None, "t": True}
    deep: list[object] = []
    cur = deep
    for _ in range(100):
        nxt: list[object] = []
        cur.append(nxt)
        cur = nxt
    assert json_safe(deep) is not None  # bounded, never a RecursionError


def test_near_duplicates_are_the_close_ones_closest_first() -> None:
    base = "ffffffffffffffff"
    candidates = [("far", "0000000000000000"), ("two", "fffffffffffffffc"),
                  ("zero", base), ("bad", "not-hex-at-all!!"), ("short", "ff")]
    assert near_duplicates(base, candidates, 8) == [
        {"photo_id": "zero", "distance": 0}, {"photo_id": "two", "distance": 2}]
    assert near_duplicates(base, candidates, 0) == [{"photo_id": "zero", "distance": 0}]
    assert phash_of({"hashes": {"phash": "ABCDEF0123456789"}}) == "abcdef0123456789"
    assert phash_of({"hashes": {"phash": "xyz"}}) is None and phash_of({}) is None


def test_public_errors_are_clear_and_leak_no_paths() -> None:
    stored = "5b91-4e_holiday.jpg"
    media = MediaError(f"the file is not an image Conveyor can read ({stored}: damaged)",
                       code="image_corrupt")
    text = public_error(media, attempts=1, max_attempts=3, stored_name=stored,
                        filename="holiday.jpg")
    assert text == "the file is not an image Conveyor can read (holiday.jpg: damaged)"

    leaky = PermanentError("cannot open /var/lib/conveyor/storage/photos/u/x.jpg for reading",
                           code="provider_rejected")
    text = public_error(leaky, attempts=1, max_attempts=3)
    assert "/var/lib" not in text and "x.jpg" in text

    internal = TransientError("FileNotFoundError: [Errno 2] /srv/secret/path",
                              code="internal_error")
    text = public_error(internal, attempts=3, max_attempts=3)
    assert "/srv" not in text and "Errno" not in text
    assert text.startswith("gave up after 3 attempts: an unexpected error")

    timeout = TransientError("the service timed out", code="provider_timeout")
    assert public_error(timeout, attempts=3, max_attempts=3) == (
        "gave up after 3 attempts: the service timed out")
    assert len(public_error(PermanentError("x" * 5000), attempts=1, max_attempts=3)) == 500


def test_the_detail_page_shows_any_providers_results() -> None:
    google = {"labels": [{"name": "Beach", "confidence": 0.93, "mid": "/m/0b3yr"}],
              "text": {"text": "SURF", "locale": "en", "lines": [{"text": "SURF"}]},
              "colors": [{"hex": "#A1B2C3", "fraction": 0.5, "score": 0.8},
                         {"hex": "red;}</style><script>", "fraction": 0.1}],
              "safe_search": {"adult": "VERY_UNLIKELY"}, "near_duplicates": []}
    shown = display_results({"ai_results": google, "width": 640, "height": 480})
    assert (shown["width"], shown["height"]) == (640, 480)
    assert shown["labels"] == [{"name": "Beach", "confidence": 0.93}]
    assert shown["text"] == "SURF" and shown["text_lines"] == 1
    assert shown["colors"] == [{"hex": "#a1b2c3", "fraction": 0.5}]  # only real colours
    assert shown["safe_search"] == {"adult": "VERY_UNLIKELY"} and shown["extra"] == {}

    llm = {"caption": "A dog on a beach.", "tags": ["dog", "beach"], "text": "",
           "objects": [{"name": "dog", "confidence": 0.9}], "mood": "sunny"}
    shown = display_results({"ai_results": llm, "width": None, "height": None})
    assert shown["caption"] == "A dog on a beach." and shown["tags"] == ["dog", "beach"]
    assert shown["labels"] == [{"name": "dog", "confidence": 0.9}]
    assert shown["extra"] == {"mood": "sunny"}

    nothing = display_results({"ai_results": None})
    assert nothing["colors"] == [] and nothing["exif"] == [] and nothing["text"] == ""
    assert display_results({"ai_results": {"quality": "bad", "dimensions": [1]}})[
        "sharpness"] is None


def test_exif_rows_are_formatted_for_people() -> None:
    rows = {r["key"]: r for r in exif_rows({
        "camera_make": "Apple", "f_number": 1.8, "exposure_time": 0.004, "focal_length": 4.2,
        "taken_at": "2024-05-01T14:03:22+02:00", "gps": {"lat": 48.8584, "lon": 2.2945,
                                                         "alt": 35.0}})}
    assert rows["f_number"]["value"] == "f/1.8"
    assert rows["exposure_time"]["value"] == "1/250 s"
    assert rows["focal_length"]["value"] == "4.2 mm"
    assert rows["taken_at"]["value"] == "2024-05-01 14:03:22+02:00"
    assert rows["gps"]["value"] == "48.85840, 2.29450 (35 m)"
    assert rows["gps"]["href"].startswith("https://www.openstreetmap.org/?mlat=48.858400")
    assert exif_rows("not a dict") == [] and exif_rows({"gps": {"lat": "x"}}) == []


def test_content_types_are_recorded_only_when_plausible() -> None:
    assert clean_content_type("image/JPEG; charset=x", "a.jpg") == "image/jpeg"
    assert clean_content_type("application/octet-stream", "a.png") == "image/png"
    assert clean_content_type("<script>", "a.heic") in ("image/heic", None)
    assert clean_content_type(None, "noext") is None
