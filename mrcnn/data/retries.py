"""Object storage that is unreachable for a while: every call `mrcnn.data.storage` makes to it
is retried with backoff for a time budget, then fails in one line naming the URL and the budget.

What the clients do on their own (read in their source, 2026-12):
- botocore (under s3fs): `legacy` retry mode unless `AWS_RETRY_MODE` says otherwise, 5 attempts
  (`AWS_MAX_ATTEMPTS`) with a random backoff of at most 1, 2, 4, 8 s: an outage longer than
  ~15 s (often much less: the backoff is `random() * 2**n`) raises `EndpointConnectionError`.
- s3fs: 5 attempts of its own (`retries`), 0.1 to 0.5 s apart, but only for read errors
  (`S3_RETRYABLE_ERRORS`): a refused connection is not retried by s3fs at all.
- pyarrow's `S3FileSystem` (Ray Train's storage): `AwsStandardS3RetryStrategy(max_attempts=3)`,
  a second or so in all.
None of them rides out a storage server restarting or a network blip of 10-20 s, and none says
how long it tried. So botocore is set to a short, known retry (`BOTOCORE_RETRIES`: 3 attempts,
`standard` mode, a few seconds) and this module retries around it for `budget()` seconds:
`MRCNN_STORAGE_RETRY_S` (default 120; 0 = one try) in the environment of every process that
reads or writes object storage (stages, Ray workers, DataLoader workers inherit it).

Only transient failures are retried (`is_transient`: no connection, connection dropped, timeouts,
HTTP 5xx); a missing object or a refused login fails at once, as before.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

ENV = "MRCNN_STORAGE_RETRY_S"
DEFAULT_BUDGET_S = 120.0
FIRST_WAIT_S = 0.5  # then doubled after each failure, up to MAX_WAIT_S
MAX_WAIT_S = 10.0

# botocore's own retries inside each of our attempts: few and short, so `budget()` is what
# decides how long an outage is ridden out (legacy mode's random backoff would blur it).
BOTOCORE_RETRIES = {"mode": "standard", "total_max_attempts": 3}

T = TypeVar("T")


class StorageUnavailableError(ConnectionError):
    """Object storage stayed unreachable for the whole retry budget."""


def budget() -> float:
    """The retry budget in seconds, from `MRCNN_STORAGE_RETRY_S` (default 120)."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"{ENV}={text!r}: expected a number of seconds >= 0 (e.g. 120)")
    return seconds


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the store was unreachable or failed on its side,
    rather than that the request was wrong (missing object, no permission)."""
    import botocore.exceptions as boto

    seen: BaseException | None = error
    for _ in range(8):  # the cause chain s3fs and aiobotocore build; bounded
        if seen is None:
            return False
        if isinstance(seen, (FileNotFoundError, PermissionError, IsADirectoryError)):
            return False
        if isinstance(
            seen, (boto.ConnectionError, boto.HTTPClientError, ConnectionError, TimeoutError)
        ):
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return int(status or 0) >= 500
        if type(seen).__module__.startswith("aiohttp"):  # ClientConnectorError, payload errors
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def call(url: str, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)`, retried with backoff (0.5, 1, 2, 4, 8, 10, 10 ... s) while it
    fails transiently, for at most `budget()` seconds -> its result. Past the budget:
    `StorageUnavailableError` naming `what`, `url` and the budget."""
    limit = budget()
    deadline = time.monotonic() + limit
    attempt = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_transient(e):
                raise
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageUnavailableError(
                    f"{what} {url}: object storage unreachable, gave up after {limit:g} s "
                    f"({attempt} attempt{'s' * (attempt > 1)}; last error: {type(e).__name__}: "
                    f"{e}); check the "
                    f"endpoint (AWS_ENDPOINT_URL) and the network, or allow longer outages "
                    f"with {ENV}=<seconds>"
                ) from e
            wait = min(MAX_WAIT_S, FIRST_WAIT_S * 2 ** (attempt - 1), left)
            logger.warning(
                "%s %s: %s: %s; retrying in %.1f s (%.0f s of %g s left)",
                *(what, url, type(e).__name__, e, wait, left, limit),
            )
            time.sleep(wait)
