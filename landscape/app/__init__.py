"""The application layer: the ``landscape`` command (``cli/``), the parallel sweep's worker
processes (``worker``), and the process tuning both apply when they start (``runtime``).

Nothing below this package imports it: the library (core and workflows) never changes the
process it runs in.
"""
