"""Session records: one object per SMTP session in the seed's "SMTP Session"
schema (shared/seeds/smtp-session-schema.txt), for ``--trace`` and the
library's ``on_session`` callback.

The schema's own fields say what the session was -- ``host``, ``port``,
``secure`` (what really happened: ``tls``, ``starttls`` or ``none``),
``authentication`` (mechanism and username, never a secret),
``clientHostname``, ``extensions`` as the server listed them.  The
extensions this module adds (the schema allows extra properties):

- ``transactions``: each one in the schema's ``Transaction`` shape (``from``,
  ``recipients``, ``messageSize``) plus ``replyCodes``, one per recipient;
- ``dialogue``: every command in the schema's ``SMTPCommand`` shape and every
  reply in its ``SMTPResponse`` shape, each with ``direction`` and ``at``
  (seconds since the session started).  What ``SMTPCommand`` cannot name (a
  BDAT chunk, message content, a SASL response) keeps the seed example's
  ``{"direction", "data", "note"}`` shape, secrets redacted;
- ``peer`` (the address connected to), ``startedAt`` (UTC, ISO 8601),
  ``duration`` (seconds), and ``error`` (an ``SMTPResponse``) if it failed.

A recorder is a :class:`~bulkmail.protocol.pipeline.TraceSink`: the sans-IO
connection feeds it the dialogue it already shows a trace.  Nothing is built
for a session that is not sampled, so tracing off costs one ``is None`` test
per session and per batch.
"""

from __future__ import annotations

import datetime
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .protocol.auth import Credentials
from .protocol.replies import Reply
from .protocol.transaction import Envelope, TransactionResult

#: a finished session record goes here (it must not block: it runs in the trio loop)
SessionCallback = Callable[[dict[str, Any]], None]

#: the verbs the schema's ``SMTPCommand.command`` enumerates
SCHEMA_VERBS = frozenset({
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "VRFY", "EXPN", "NOOP", "QUIT",
    "STARTTLS", "AUTH",
})
#: the mechanisms the schema's ``Authentication.mechanism`` enumerates
SCHEMA_MECHANISMS = frozenset({"PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "XOAUTH2"})
_ENHANCED = re.compile(r"[245]\.[0-9]+\.[0-9]+")


class SessionConfig(Protocol):
    """What a record says of a session's configuration (``bulkmail.config.SessionConfig``;
    a protocol, since the config holds the ``SessionRecords`` it is recorded by)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def secure(self) -> str: ...
    @property
    def client_hostname(self) -> str: ...
    @property
    def credentials(self) -> Credentials | None: ...


def response(reply: Reply) -> dict[str, Any]:
    """A reply in the schema's ``SMTPResponse`` shape."""
    out: dict[str, Any] = {"code": reply.code, "message": reply.text}
    if reply.enhanced is not None and _ENHANCED.fullmatch(reply.enhanced):
        out["enhanced"] = reply.enhanced
    return out


class SessionRecords:
    """Where records go: ``emit`` hears one session in every ``sample``.

    One instance is shared by every session of a run (it counts them), so it
    compares by identity and is safe in a frozen, hashable config."""

    __slots__ = ("_seen", "emit", "sample")

    def __init__(self, emit: SessionCallback, sample: int = 1) -> None:
        if sample < 1:
            raise ValueError(f"trace sample must be 1 or more, not {sample}")
        self.emit = emit
        self.sample = sample
        self._seen = 0

    def recorder(self, config: SessionConfig, peer: str) -> SessionRecorder | None:
        """A recorder for a new session, or None when this one is not sampled."""
        seen = self._seen
        self._seen = seen + 1
        if seen % self.sample:
            return None
        return SessionRecorder(config, peer, self.emit)


class SessionRecorder:
    """Builds one session's record from its dialogue and transaction results."""

    __slots__ = ("_emit", "_envelopes", "_last_verb", "_start", "dialogue", "record",
                 "transactions")

    def __init__(self, config: SessionConfig, peer: str, emit: SessionCallback) -> None:
        self._emit = emit
        self._start = time.monotonic()
        self._last_verb = ""
        self._envelopes: deque[Envelope] = deque()
        self.dialogue: list[dict[str, Any]] = []
        self.transactions: list[dict[str, Any]] = []
        record: dict[str, Any] = {
            "host": config.host or peer,
            "port": config.port,
            "secure": "tls" if config.secure == "tls" else "none",
            "clientHostname": config.client_hostname,
            "extensions": [],
            "peer": peer,
            "startedAt": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        }
        if config.credentials is not None:
            record["authentication"] = {"username": config.credentials.username}
        self.record = record

    def _at(self) -> float:
        return round(time.monotonic() - self._start, 6)

    # -- the TraceSink the connection feeds --------------------------------------

    def client(self, data: bytes | str, note: str | None = None) -> None:
        text = (data.decode("utf-8", "replace") if isinstance(data, bytes) else data)
        text = text.removesuffix("\r\n")
        verb, _, parameters = text.partition(" ")
        verb = verb.upper()
        entry: dict[str, Any] = {"direction": "client", "at": self._at()}
        if verb in SCHEMA_VERBS and note is None:
            entry["command"] = verb
            if parameters:
                entry["parameters"] = parameters
            if verb == "AUTH":
                self._authenticating(parameters.partition(" ")[0].upper())
        else:  # a BDAT chunk, the content, a SASL response (already redacted)
            entry["data"] = text
            if note:
                entry["note"] = note
        self._last_verb = verb
        self.dialogue.append(entry)

    def server(self, reply: Reply, note: str | None = None) -> None:
        entry = {"direction": "server", "at": self._at(), **response(reply)}
        self.dialogue.append(entry)
        if reply.code == 250 and self._last_verb in ("EHLO", "HELO"):
            # as the server listed them, after the first line (its name)
            self.record["extensions"] = list(reply.lines[1:])

    def note(self, text: str) -> None:
        self.dialogue.append({"at": self._at(), "note": text})
        if "TLS" in text:
            self.record["secure"] = "starttls"

    def _authenticating(self, mechanism: str) -> None:
        authentication = self.record.setdefault("authentication", {})
        if mechanism in SCHEMA_MECHANISMS:
            authentication["mechanism"] = mechanism
        else:  # the schema's enum lacks it: say so without breaking the shape
            authentication["saslMechanism"] = mechanism

    # -- transactions --------------------------------------------------------------

    def follow(
        self,
        envelopes: Sequence[Envelope],
        report: Callable[[TransactionResult], None],
        refill: Callable[[], Sequence[Envelope]] | None,
    ) -> tuple[Callable[[TransactionResult], None], Callable[[], Sequence[Envelope]] | None]:
        """Wrap a batch's hooks so each result is paired with its envelope
        (results come in envelope order, refills included)."""
        pending = self._envelopes
        pending.extend(envelopes)

        def recorded(result: TransactionResult) -> None:
            self.transaction(pending.popleft(), result)
            report(result)

        if refill is None:
            return recorded, None
        more = refill

        def refilled() -> Sequence[Envelope]:
            envelopes = more()
            pending.extend(envelopes)
            return envelopes

        return recorded, refilled

    def transaction(self, envelope: Envelope, result: TransactionResult) -> None:
        self.transactions.append({
            "from": envelope.sender,
            "recipients": list(envelope.recipients),
            "messageSize": envelope.message.size,
            "replyCodes": [reply.code for reply in result.replies],
            "attempted": result.attempted,
        })

    def finish(self, error: Reply | None) -> None:
        """The session is closed: hand the record on."""
        record = self.record
        record["duration"] = self._at()
        record["transactions"] = self.transactions
        record["dialogue"] = self.dialogue
        if error is not None:
            record["error"] = response(error)
        self._emit(record)
