"""The embedded broker: kombu's filesystem transport, with atomic writes.

kombu's own ``_put`` opens the final message file and then writes it. A worker polling the folder
can move the file away in between and read an empty message (the advisory lock it takes does not
stop ``shutil.move``). Here a message is written under a name the reader skips and renamed into
place, so a reader only ever sees complete files. Everything else is kombu's.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps

ALIAS = "transferlab-fs"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        # A leading dot: kombu's reader matches "<anything>.<queue>.msg" after the FIRST dot,
        # which a temp name like ".<name>.tmp" never does.
        tmp = os.path.join(self.data_folder_out, f".{name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(dumps(payload).encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(self.data_folder_out, name))


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"
