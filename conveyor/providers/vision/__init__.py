"""Photo-analysis providers behind :class:`~conveyor.providers.vision.base.AIProviderBase`."""
