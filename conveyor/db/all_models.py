"""Imports every table so that Alembic and ``Base.metadata`` see the whole schema."""

from conveyor.db import models as engine_models
from conveyor.pipelines.photos import models as photos_models
from conveyor.pipelines.records import models as records_models

__all__ = ["engine_models", "photos_models", "records_models"]
