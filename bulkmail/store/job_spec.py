"""What a job sends, as the JSON stored with it: a worker on another machine
needs only the database URL to rebuild the same message, signature and
retry schedule.

The message travels as base64 bytes (it may be 8-bit), the DKIM key in the
form dkimpy signs with.  Whoever can read the ``jobs`` table can read the key:
give workers a database role of their own (README, "Several machines").
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from ..dkim_signing import DKIMError, DKIMSigner
from ..message import Content, StaticContent, TemplateContent, has_placeholders, message_problem
from ..newsletter import DecoratedContent, Decorations
from ..policy import RetryPolicy
from .errors import StoreError

__all__ = ["SPEC_VERSION", "JobSpec"]

SPEC_VERSION = 1


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job's sending options (``bulkmail job create``'s, ``send``'s job half)."""

    sender: str
    message: bytes
    verp: bool = False
    max_rcpts: int = 50
    retry_first: float = 60.0
    #: seconds from the first worker's start during which deferred recipients are retried
    retry_for: float = 600.0
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    dkim: DKIMSigner | None = None

    def to_options(self) -> dict[str, Any]:
        dkim = None
        if self.dkim is not None:
            dkim = {
                "selector": self.dkim.selector,
                "domain": self.dkim.domain,
                "algorithm": self.dkim.algorithm,
                "headers": list(self.dkim.headers),
                "key": base64.b64encode(self.dkim.private_key).decode("ascii"),
            }
        return {
            "version": SPEC_VERSION,
            "sender": self.sender,
            "message": base64.b64encode(self.message).decode("ascii"),
            "verp": self.verp,
            "max_rcpts": self.max_rcpts,
            "retry_first": self.retry_first,
            "retry_for": self.retry_for,
            "unsubscribe_url": self.unsubscribe_url,
            "unsubscribe_mailto": self.unsubscribe_mailto,
            "dkim": dkim,
        }

    @classmethod
    def from_options(cls, options: dict[str, Any], *, job: int | None = None) -> JobSpec:
        """The spec stored by ``to_options``; StoreError for a job this version
        cannot send (made by a newer bulkmail, or not by ``job create``)."""
        name = f"job {job}" if job is not None else "job"
        version = options.get("version")
        if version != SPEC_VERSION:
            raise StoreError(
                f"{name} has no sending options this bulkmail understands (version {version!r});"
                " create it with 'bulkmail job create'"
            )
        try:
            dkim = None
            stored = options.get("dkim")
            if stored:
                dkim = DKIMSigner(
                    stored["selector"], stored["domain"], base64.b64decode(stored["key"]),
                    stored["algorithm"], tuple(stored["headers"]),
                )
            return cls(
                sender=str(options["sender"]),
                message=base64.b64decode(options["message"]),
                verp=bool(options.get("verp", False)),
                max_rcpts=int(options.get("max_rcpts", 50)),
                retry_first=float(options.get("retry_first", 60.0)),
                retry_for=float(options.get("retry_for", 600.0)),
                unsubscribe_url=options.get("unsubscribe_url"),
                unsubscribe_mailto=options.get("unsubscribe_mailto"),
                dkim=dkim,
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise StoreError(f"{name} has damaged sending options: {exc!r}") from exc

    def content(self, *, check: bool = True) -> Content:
        """The content every recipient gets, decorated and signed as ``send`` would
        (``check``: the key is test-signed first -- a worker refuses a job it
        cannot sign before it sends any of it)."""
        problem = message_problem(self.message)
        if problem is not None:
            raise StoreError(f"the job's message {problem}")
        try:
            inner: Content = (
                TemplateContent(self.message)
                if has_placeholders(self.message.decode("utf-8", "replace"))
                else StaticContent(self.message)
            )
            if check and self.dkim is not None:
                self.dkim.check()
            return DecoratedContent(inner, Decorations(
                identity_domain=self.sender.rpartition("@")[2] or "bulkmail.invalid",
                unsubscribe_url=self.unsubscribe_url,
                unsubscribe_mailto=self.unsubscribe_mailto,
                dkim=self.dkim,
            ))
        except (DKIMError, ValueError) as exc:
            raise StoreError(f"the job's message cannot be sent: {exc}") from exc

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(first_delay=self.retry_first)
