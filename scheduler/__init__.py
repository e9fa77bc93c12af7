"""The clock: the long-running process that decides when job runs happen.

``loader clock jobs/`` (the Procfile's ``clock:`` line) runs :class:`Clock`; it can also
run inside another app::

    from loader.scheduler import Clock

    clock = Clock(["jobs/"])
    clock.start()          # a background thread
    ...
    clock.stop()           # nothing new starts; running jobs checkpoint and end

It uses loader's public API only (``import loader``). The folder ``scheduler/`` of the
repository installs as ``loader.scheduler``: the distribution owns no top-level name but
``loader``.
"""

from .clock import Clock, slot_run_id
from .web import WebServer, serve_status_page

__all__ = ["Clock", "WebServer", "serve_status_page", "slot_run_id"]
