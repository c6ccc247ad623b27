"""Opening a session to one destination: which host, which address, which
source address, and what to do when TLS breaks."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING

from ..config import SessionConfig
from ..errors import SMTPAuthError, SMTPError, SMTPTLSError
from ..protocol.replies import Reply
from ..routing import Destination, Host
from ..session import SMTPSession

if TYPE_CHECKING:
    from ..tls_policy.planner import TLSPlan


class SourceChoice(Enum):
    """A session's source address that is not an address."""

    #: the connector's turn: round robin over the destination's source addresses
    ROUND_ROBIN = "round-robin"
    #: (the pool's) no source may send now: no session is opened
    HELD = "held"


ROUND_ROBIN = SourceChoice.ROUND_ROBIN
@dataclass(frozen=True, slots=True)
class ConnectionFailure:
    """No host of a destination could be reached: what an operator needs to
    see within seconds (a down or mistyped relay), not when retries run out.

    Reported once per failed connection attempt, never per recipient.
    """

    #: the destination's key (``relay:host:port``, or the MX host set)
    destination: str
    #: why: a synthesised ``451 4.4.1 cannot connect to ...: [Errno 111] ...``, or the server's
    reply: Reply
    #: the last host tried, when known
    host: str | None
    #: connection attempts to this destination that failed so far in this run
    failures: int
    #: seconds until a new connection to it is tried (its backoff pause)
    next_try: float


#: called by the engine on each :class:`ConnectionFailure`; must not raise
ConnectionObserver = Callable[[ConnectionFailure], None]


class Connector:
    """Connects to a destination's hosts in preference order.

    Raises the last host's :class:`SMTPError` when none would do, and an
    :class:`SMTPAuthError` at once: the credentials are the same for every
    host, so another host would only refuse them again.
    """

    def __init__(
        self,
        config: SessionConfig,
        destination: Destination,
        source_addresses: tuple[str, ...],
        rng: random.Random,
    ) -> None:
        self.config = config
        self.destination = destination
        self._sources = itertools.cycle(source_addresses or (None,))
        self._rng = rng
        #: MTA-STS / DANE rules for this destination's hosts (bulkmail.tls_policy)
        self.tls: TLSPlan | None = getattr(destination, "tls", None)

    async def connect(
        self, *, pipelining: bool, source: str | SourceChoice | None = ROUND_ROBIN
    ) -> SMTPSession:
        """A session from ``source`` (an address, None for the system's choice)."""
        last: SMTPError | None = None
        if isinstance(source, SourceChoice):
            source = next(self._sources)  # round robin over the source addresses
        for host in self.host_order():
            config = replace(
                self.config,
                host=host.name,
                port=host.port,
                source_address=source,
                use_pipelining=pipelining,
            )
            plan = self.tls
            rule = plan.rule(host.name) if plan is not None else None
            if rule is not None:
                if rule.refusal is not None:  # the policy excludes it: not even a connection
                    last = rule.refuse(host.name)
                    continue
                config = rule.apply(config)  # STARTTLS required and verified, or DANE
            for address in host.addresses or (host.name,):
                try:
                    if rule is not None:
                        return await rule.open(config, address)
                    return await SMTPSession.connect(config, address)
                except SMTPAuthError:
                    raise
                except SMTPTLSError as exc:
                    last = exc
                    if config.secure != "may":
                        break  # required TLS fails closed
                    # opportunistic TLS that breaks: like Postfix's "may", this
                    # server gets the message in plaintext rather than never
                    try:
                        return await SMTPSession.connect(replace(config, secure="none"), address)
                    except SMTPAuthError:
                        raise
                    except SMTPError as retry_exc:
                        last = retry_exc
                except SMTPError as exc:
                    last = exc
        assert last is not None
        raise last

    def host_order(self) -> list[Host]:
        """Hosts by preference, shuffled within equal preference on every connection,
        so one pool's sessions spread over a provider's equal MX hosts."""
        hosts = list(self.destination.hosts)
        if len(hosts) < 2:
            return hosts
        rng = self._rng
        return sorted(hosts, key=lambda h: (h.preference, rng.random()))
