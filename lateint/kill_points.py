"""Named points where a test can hold a binary, so that a SIGKILL lands exactly there.

Some windows a crash test must hit are milliseconds wide (lateint.index.delete: between writing the
tombstone set and publishing the generation). Racing a kill against them is flaky on a loaded
machine; instead the test sets

    LATEINT_HOLD_AT=publish  LATEINT_HOLD_DIR=/tmp/dir   (and creates /tmp/dir/publish.hold)

and the binary, on reaching `hold("publish")`, writes /tmp/dir/publish.reached and waits while
publish.hold exists. The test sees `.reached`, kills, and knows where the kill landed. Without
the variables `hold` returns at once; it never changes what a binary computes.
"""

from __future__ import annotations

import os
import time

from lateint import atomic


def hold(point: str) -> None:
    """Waits at `point` while $LATEINT_HOLD_DIR/<point>.hold exists, if $LATEINT_HOLD_AT names
    `point`; announces the arrival as $LATEINT_HOLD_DIR/<point>.reached."""
    if os.environ.get("LATEINT_HOLD_AT") != point:
        return
    folder = os.environ.get("LATEINT_HOLD_DIR")
    if not folder or not os.path.isdir(folder):
        raise ValueError(
            f"LATEINT_HOLD_AT={point!r} needs LATEINT_HOLD_DIR to name an existing directory; "
            f"got {folder!r}"
        )
    atomic.write_text(os.path.join(folder, f"{point}.reached"), f"{os.getpid()}\n")
    while os.path.exists(os.path.join(folder, f"{point}.hold")):
        time.sleep(0.01)
