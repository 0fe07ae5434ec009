"""Vision LLMs behind the :class:`~conveyor.providers.llm.base.VisionLLM` port."""

from conveyor.providers.llm.openai_compat import build_llm

__all__ = ["build_llm"]
