"""providers/llm"""
