"""The clock: the long-running process that decides when job runs happen.

It will load job files, compute each job's next fire time from its ``schedule:`` and
hand due runs to an executor (inline threads by default, Procrastinate workers to scale
out). It uses loader's public API only (``loader.load_job``, ``loader.run_job``).
Not implemented yet: ``loader run`` covers one-off runs and scheduled one-off dynos.
"""
