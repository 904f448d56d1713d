"""The embedded default broker: kombu's filesystem transport, with message files written atomically.

kombu's filesystem Channel._put creates ``<name>.<queue>.msg`` and then writes into it, while a
consuming worker lists the folder, moves any ``.msg`` file away and reads it without a lock: a
message caught between the two reads as empty, and the worker exits with "Unrecoverable error:
JSONDecodeError" (seen when the web process queued a run while a worker polled). Here the message
is written under a name no reader takes (``.msg.tmp``) and renamed into place, which is atomic
within one folder.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Put ``payload`` on ``queue``: it appears under its final name only once fully written."""
        # The name's parts as kombu's: readers take "<anything>.<queue>.msg", oldest first.
        filename = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        path = os.path.join(self.data_folder_out, filename)
        partial = f"{path}.tmp"
        try:
            with open(partial, "wb") as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, path)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {filename!r} to directory") from exc


class FilesystemTransport(filesystem.Transport):
    Channel = Channel
