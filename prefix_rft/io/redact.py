"""One place that masks secrets before text leaves the process (messages, log lines, MLflow
params/tags/artifacts, Metaflow artifacts).

Masked: the password of any URI's userinfo (`scheme://user:password@host` becomes
`scheme://user:***@host`: tracking servers, database URIs such as `postgresql://u:p@h/db`, S3
endpoints) and the values of the environment variables in `SECRET_ENV` wherever they appear.

Two strengths: `redact` (both) for what people read (messages, log lines, params, artifacts),
`redact_uri` (URI passwords only) for records other code reads back (a config or a tracking record
stored as a Metaflow artifact): masking environment values there would rewrite ordinary text, e.g.
a local S3 server's secret "test" inside a path.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import unquote

MASK = "***"
# environment variables whose values are secrets wherever they show up
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN", "DATABRICKS_TOKEN", "HF_TOKEN")
_MIN_SECRET_CHARS = 8  # shorter env values (a local server's "test") would mask ordinary words
# scheme://user:password@ ; the password runs to the last '@' before the host (no '/' or space)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):(?P<pw>[^\s/]+)@")


def redact_uri(text) -> str:
    """`text` with only the passwords of URIs masked."""
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", str(text))


def redact(text) -> str:
    """`text` (anything; str() is taken) with URI passwords and secret env values masked."""
    s = redact_uri(text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= _MIN_SECRET_CHARS:
            s = s.replace(value, MASK)
    return s


def redact_data(obj):
    """A copy of nested dicts/lists/tuples with every string redacted (config dumps)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_data(v) for v in obj)
    return obj


def has_password(uri: str | None) -> bool:
    return bool(uri) and _USERINFO.search(uri) is not None


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """`scheme://user:pw@host/...` -> (`scheme://host/...`, user, pw), both unquoted; a URI
    without a password comes back unchanged with (None, None)."""
    m = _USERINFO.match(uri)
    if not m:
        return uri, None, None
    scheme, user = m["head"].split("://", 1)
    return f"{scheme}://{uri[m.end():]}", unquote(user), unquote(m["pw"])


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's message and traceback before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Put a `RedactingFilter` on every handler of `logger` (default: the root logger); once."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
