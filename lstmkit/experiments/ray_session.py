"""Ray for one command, stopped off the command's critical path.

``ray.shutdown`` takes about a second on a local Ray, nearly all of it waiting for Ray's
processes (GCS, raylet, agents, workers) to exit. A command that has its results from Ray
and still has work of its own to do (reports, plots) can let that waiting run alongside::

    session = RaySession(ray, address=None, include_dashboard=False)   # ray.init
    ...                                  # tasks
    session.stop_in_background()         # ray.shutdown starts in a thread
    write_reports()                      # meanwhile
    session.close()                      # waits until Ray is stopped (also after an error)
"""

from __future__ import annotations

import threading
from typing import Any


class RaySession:
    """Ray started by ``ray.init(**options)`` (on this machine's cores, or joined at a
    cluster's address) for one command, stopped by ``close``.

    A Ray already initialised in this process (a notebook's, a test's) is used as it is, not
    stopped (``owned`` is False). ``ray.init``'s errors propagate from the constructor, and
    nothing is left to stop.
    """

    def __init__(self, ray: Any, **options: Any) -> None:
        self.ray = ray
        self.owned = not ray.is_initialized()
        self._stopping: threading.Thread | None = None
        if self.owned:
            ray.init(**options)

    def stop_in_background(self) -> None:
        """Start ``ray.shutdown`` in a thread and return at once; the caller must not use Ray
        afterwards."""
        if self.owned and self._stopping is None:
            self._stopping = threading.Thread(target=self.ray.shutdown, name="ray-shutdown")
            self._stopping.start()

    def close(self) -> None:
        """Stop Ray, or wait until the stop begun by ``stop_in_background`` has finished."""
        if not self.owned:
            return
        if self._stopping is None:
            self.ray.shutdown()
        else:
            self._stopping.join()
