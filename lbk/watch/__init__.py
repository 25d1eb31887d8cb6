"""The watch daemon: continuous capture, offline spool, status file."""
