"""Verify DKIM with libopendkim (Debian's opendkim-tools), which shares no code
with dkimpy, reading public keys from the loopback DNS server.

``opendkim-testmsg`` has no option for a key file or a resolver: libopendkim
asks glibc's libresolv, which reads ``/etc/resolv.conf`` and only ever uses
port 53.  So the DNS server listens on port 53 of a loopback address of its
own (127.53.x.y, unlikely to collide with a parallel run), and each verifier
runs in a private mount namespace (``unshare --mount``) where
``/etc/resolv.conf`` is a bind mount naming that address.  Nothing outside
the verifier process sees the change, and no query leaves 127.0.0.0/8.
Binding port 53 and making a mount namespace need root (CI runs as root).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import trio

from .dnsserver import DNSServer

TESTMSG = "/usr/sbin/opendkim-testmsg"


def txt(value: str) -> str:
    """A TXT record's text, split into strings under 255 octets as DNS requires."""
    return " ".join(f'"{value[i:i + 200]}"' for i in range(0, len(value), 200))


async def opendkim_verify(
    messages: list[bytes], records: dict[str, str], workdir: Path
) -> list[tuple[int, str]]:
    """(exit status, stderr) of ``opendkim-testmsg`` for each message; 0 = verified."""
    testmsg = shutil.which("opendkim-testmsg") or TESTMSG
    assert os.path.exists(testmsg), "opendkim-testmsg missing: apt-get install opendkim-tools"
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to point libresolv at the test DNS"
    results: list[tuple[int, str]] = []
    async with trio.open_nursery() as nursery:
        server = DNSServer()
        for attempt in range(10):
            host = f"127.53.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
            try:
                await nursery.start(lambda task_status, h=host: server.serve(
                    host=h, port=53, task_status=task_status))
                break
            except OSError:
                if attempt == 9:
                    raise
        for name, value in records.items():
            server.add(name, "TXT", txt(value))
        resolv = workdir / "resolv.conf"
        resolv.write_text(f"nameserver {host}\noptions timeout:2 attempts:1\n")
        script = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
        for message in messages:
            proc = await trio.run_process(
                [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                 str(resolv), testmsg, "-C", "-t", str(workdir)],
                stdin=message, capture_stdout=True, capture_stderr=True, check=False,
            )
            results.append((proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")))
        nursery.cancel_scope.cancel()
    assert server.queries, f"opendkim-testmsg never asked the test DNS server: {results}"
    return results
