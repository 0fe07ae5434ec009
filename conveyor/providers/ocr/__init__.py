"""providers/ocr"""
