"""pipelines/records"""
