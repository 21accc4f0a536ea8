"""Catalog scans: the scan folder layout, executors (local or Ray), the pipeline, the HTML report,
mergekit export.
"""
