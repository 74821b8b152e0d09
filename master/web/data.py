"""What the pages show that is not one store call: samples of the queue lengths, a failed
log's first error line, when the repository's index was last written."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from common.arch import ALL, queue_for
from master import buildlogs
from master.services import Services
from master.store import Job

log = logging.getLogger(__name__)

#: How often the master's housekeeping samples the queue lengths.
SAMPLE_INTERVAL = 60.0
_ERROR_LINE = re.compile(r"\b(error|fatal|failed|failure|cannot|not found)\b", re.IGNORECASE)


#: After the broker could not be read, pages do not try again for this long (a read of a
#: broker that is away takes seconds).
BROKER_RETRY = 30.0
_broker_away_until = 0.0


def farm_queues(services: Services) -> list[tuple[str, int | None, bool]]:
    """The build queues as the scheduler reads them (name, length or None, paused); while the
    broker is away, answered at once without lengths."""
    global _broker_away_until
    now = time.monotonic()
    if now < _broker_away_until:
        paused = services.store.queues.paused()
        names = sorted({*(queue_for(a) for a in services.settings.repository.architectures),
                        queue_for(ALL), *paused})
        return [(name, None, name in paused) for name in names]
    found = services.scheduler.queues()
    if found and all(length is None for _name, length, _paused in found):
        _broker_away_until = now + BROKER_RETRY
    return found


class QueueSampler:
    """Called by the master's housekeeping: a sample of every queue's length each minute."""

    def __init__(self, services: Services, interval: float = SAMPLE_INTERVAL) -> None:
        self.services = services
        self.interval = interval
        self._last = 0.0

    def tick(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self._last < self.interval:
            return False
        self._last = now
        lengths = self.services.scheduler.queue_lengths()
        if lengths is None:
            return False  # the broker cannot be read just now
        self.services.store.stats.add_samples(lengths, now)
        return True


def first_error_line(data_dir: str | Path, job: Job, limit: int = 256 * 1024) -> str | None:
    """The first line of a job's log that reads like an error (else its last line)."""
    path = buildlogs.log_path(data_dir, job)
    try:
        with open(path, "rb") as fh:
            text = fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if _ERROR_LINE.search(line) and not line.startswith("[pkgfarm"):
            return line[:300]
    return lines[-1][:300] if lines else None


def index_updated(services: Services) -> float | None:
    """When the repository's index (of any format it serves) was last written, as the store
    recorded it; before the first time this master wrote one, the newest publication's."""
    written = services.store.packages.index_written_at()
    return written if written is not None else services.store.stats.last_upload()
