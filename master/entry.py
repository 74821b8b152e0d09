"""The ``master`` command's entry point.

``master serve`` runs gunicorn with gevent workers, and gevent must patch the standard library
before anything imports it (ssl above all: a context made from a module imported earlier
recurses without end). So this module imports nothing of the project before the patch, and the
rest of the command (master.cli) is imported after it.
"""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        from gevent import monkey

        monkey.patch_all()
    from master.cli import main as run

    run()
