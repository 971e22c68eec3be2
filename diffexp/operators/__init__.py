"""Measurement operators (one file each); built by ``conf/task/*.yaml``."""
