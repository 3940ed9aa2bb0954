"""Data: MXNet RecordIO framing, pretraining instances (create and read), task readers and metrics.

Submodules are imported on demand (`from bort.data.recordio import RecordIOReader`), so that worker
processes which only tokenise text do not load the whole library.
"""
