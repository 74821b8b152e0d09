"""Logging set-up shared by the master and worker commands, with secrets kept out of the logs."""

from __future__ import annotations

import logging
import re

_SECRET_PATTERNS = [
    # user:password@ in URLs (broker URLs, master URLs)
    (re.compile(r"(?P<scheme>[a-z+]+://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@"),
     r"\g<scheme>\g<user>:***@"),
    # token=… in query strings
    (re.compile(r"(?P<key>token|password)=(?P<value>[^&\s]+)", re.IGNORECASE), r"\g<key>=***"),
    # Authorization headers
    (re.compile(r"(Authorization:\s*\w+\s+)\S+", re.IGNORECASE), r"\1***"),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
