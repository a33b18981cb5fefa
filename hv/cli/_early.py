"""What the ``hv`` command must do before anything slow (imported first by ``hv.cli``).

A shard of a lab over several processes (an MPI rank: ``PMI_SIZE`` > 1) may learn that
another died before its own link to them is up (``hv.lab.Mesh``): MPICH's process manager
says so with SIGUSR1, whose default action would end this process without a word. Noted
here from the first instant; the mesh then ends the shard with a clear error.
"""

from __future__ import annotations

import os
import signal

peer_died = False


def _note(signum: int, frame: object) -> None:
    global peer_died
    peer_died = True


if os.environ.get("PMI_SIZE", "1").strip() not in ("", "0", "1"):
    signal.signal(signal.SIGUSR1, _note)
