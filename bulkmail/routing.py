"""Where a recipient's mail goes: a relay, or the domain's MX hosts (stand-in)."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Protocol

import trio

from .errors import synthetic_reply
from .protocol.replies import Reply


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    addresses: tuple[str, ...]
    port: int
    preference: int = 0


@dataclass(frozen=True, slots=True)
class Destination:
    key: str
    hosts: tuple[Host, ...]


class RoutingError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply

    @property
    def permanent(self) -> bool:
        return self.reply.code >= 500


class Router(Protocol):
    async def route(self, domain: str) -> Destination: ...


def domain_of(address: str) -> str:
    _local, at, domain = address.rpartition("@")
    if not at or not domain:
        raise ValueError(f"no domain in {address!r}")
    domain = domain.lower().rstrip(".")
    if not domain.isascii():
        domain = domain.encode("idna").decode("ascii")
    return domain


class RelayRouter:
    def __init__(self, host: str, port: int = 25) -> None:
        try:
            ipaddress.ip_address(host)
            addresses: tuple[str, ...] = (host,)
        except ValueError:
            addresses = ()
        self.destination = Destination(f"relay:{host}:{port}", (Host(host, addresses, port),))

    async def route(self, domain: str) -> Destination:
        return self.destination


@dataclass(frozen=True)
class DNSConfig:
    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 5.0
    lifetime: float = 15.0
    mx_port: int = 25


class MXRouter:
    def __init__(self, config: DNSConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()

    async def route(self, domain: str) -> Destination:
        await trio.lowlevel.checkpoint()
        raise RoutingError(synthetic_reply(451, "4.4.3", "MX routing not available yet"))
