"""Argument types that check ranges at parse time.

argparse turns an :class:`argparse.ArgumentTypeError` into one line naming
the option and exit status 2, so a value no run could use (``0``
connections, a port of ``abc``, an empty ``--relay``) stops the command
before it touches the network -- never a hang, a traceback or a silent
change of mode.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..config import Timeouts, parse_duration


def at_least(minimum: int) -> Callable[[str], int]:
    """A whole number >= ``minimum``."""

    def check(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    check.__name__ = "count"  # argparse's fallback message says "invalid count value"
    return check


def port(text: str, *, allow_zero: bool = False) -> int:
    """A TCP port, 1-65535 (0, "pick a free one", only where ``allow_zero``)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    lowest = 0 if allow_zero else 1
    if not lowest <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be {lowest}-65535, not {value}")
    return value


def listen_port(text: str) -> int:
    return port(text, allow_zero=True)


def duration(text: str) -> float:
    """``90``, ``30s``, ``500ms``, ``5m``, ``2h``, ``1d`` -> seconds (>= 0)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_duration(text: str) -> float:
    seconds = duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text!r}")
    return seconds


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def non_negative(text: str) -> float:
    """A finite number >= 0 (a latency in milliseconds, ...)."""
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text!r}")
    return value


def percent(text: str) -> float:
    """A percentage, 0 to 100."""
    value = _number(text)
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"must be a percentage from 0 to 100, not {text!r}")
    return value


def probability(text: str) -> float:
    """A probability, 0 to 1."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text!r}")
    return value


def host_port(text: str, default_port: int, *, allow_zero: bool = False) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address ->
    (host, port).  An empty host, an empty or non-numeric port, a port out of
    range (0 only where ``allow_zero``: a listening address) or stray characters
    are ArgumentTypeError."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"malformed address {text!r} (e.g. [::1]:25)")
        port_text: str | None = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a host name, or an IPv6 address without a port
        host, port_text = text, None
    if not host or any(c.isspace() or c in "/@[]" for c in host):
        raise argparse.ArgumentTypeError(
            f"malformed address {text!r}: expected HOST or HOST:PORT"
        )
    if port_text is None:
        return host, default_port
    try:
        return host, port(port_text, allow_zero=allow_zero)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}: {exc}") from None


def server_address(default_port: int) -> Callable[[str], str]:
    """Checks a HOST[:PORT] argument at parse time and keeps it as written
    (the command splits it with :func:`host_port` later)."""

    def check(text: str) -> str:
        host_port(text, default_port)
        return text.strip()

    check.__name__ = "address"
    return check


class TimeoutsAction(argparse.Action):
    """``--timeout greeting=30s,data_done=5m`` (repeatable): the stages named
    change, the others keep RFC 5321's values.  The result is a :class:`Timeouts`."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None) or Timeouts()
        changes: dict[str, str] = {}
        for item in str(values).split(","):
            stage, sep, value = item.partition("=")
            if not sep or not stage.strip():
                raise argparse.ArgumentError(
                    self, f"expected STAGE=DURATION[,STAGE=DURATION...], not {item!r}"
                )
            changes[stage.strip()] = value
        try:
            setattr(namespace, self.dest, current.updated(changes))
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
