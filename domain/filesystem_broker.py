"""Kombu's filesystem transport, with messages written atomically.

Kombu writes a message file in place (open, then write) while a consumer may
already list, move and read it: a consumer that comes between the two reads
an empty payload, fails to decode it and the message is lost (seen under
load: a job stayed `queued` for ever). Here the payload is written to a
hidden temporary name that no queue matches, then renamed into place, so a
consumer only ever sees whole messages. Embedded mode only; production uses
Redis.
"""

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # No "." + queue + ".msg" suffix: invisible to consumers until renamed.
        temporary = os.path.join(self.data_folder_out, f".{name}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
