"""Providers: OCR, vision LLM, catalogues. Each is reached through a small Protocol."""
