"""Catalog scans: the scan folder layout, the pipeline (its jobs run on an executor of
:mod:`simmerge.infra.executors`: local or Ray), the HTML report, mergekit export.
"""
