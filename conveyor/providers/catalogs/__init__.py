"""providers/catalogs"""
