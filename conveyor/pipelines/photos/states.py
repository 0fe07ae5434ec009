"""Seed 002's ``ai_processing_status`` values (also the photo item's state)."""

PIPELINE = "photos"

PENDING = "pending"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"

STATUSES: tuple[str, ...] = (PENDING, PROCESSING, COMPLETED, FAILED)

#: The one step of the pipeline: decode, analyse (or reuse a cached result), near-duplicates.
ANALYSE_STEP = "analyse"

#: ``POST /photos/process`` modes.
MODE_MISSING = "missing"
MODE_ALL = "all"
MODES: tuple[str, ...] = (MODE_MISSING, MODE_ALL)
