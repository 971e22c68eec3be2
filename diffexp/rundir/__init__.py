"""The run directory: claiming and locking it, the recorder of ``metrics.json``/PNGs/``.pt`` files, image I/O, the log file."""
