"""Geospatial I/O with numpy and rasterio only (torch enters in infer/)."""
