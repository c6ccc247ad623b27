"""Reply-driven shaping over real sockets: ``[[reactions]]`` rules of the
shaping file suspend a destination, lower its cap or bounce the rest of a job
when its server says so -- on trio's virtual clock, against the project's sink
(its ``tempfail``/``permfail`` local parts) and a scripted provider."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bulkmail import Mailer, MailerConfig, Recipient, Relay, Status, TemplateContent
from bulkmail.delivery.health import ShapingAction
from bulkmail.protocol.replies import Reply, parse_enhanced
from bulkmail.reactions import first_match, rules_for
from bulkmail.results import Result
from bulkmail.routing import DNSConfig
from bulkmail.shaping import Shaping, ShapingError
from bulkmail.sink import Sink, SinkConfig

from .dnsserver import DNSServer
from .scripted import Conn, MiniSMTP, ScriptedServer

TSS04 = (
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume"
    " or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes\r\n"
)
TEMPLATE = TemplateContent("Subject: ${name}\r\n\r\nHello ${name}.\r\n")


def people(domain: str, n: int, prefix: str = "u") -> list[Recipient]:
    return [Recipient(f"{prefix}{i}@{domain}", {"name": f"{prefix}{i}"}) for i in range(n)]


async def start_sink(nursery: trio.Nursery, **kwargs: object) -> Sink:
    sink = Sink(SinkConfig(**kwargs))  # type: ignore[arg-type]
    await nursery.start(sink.serve)
    return sink


async def serve_scripted(
    nursery: trio.Nursery, handler: Callable[[Conn], object], host: str, port: int
) -> ScriptedServer:
    """A scripted server on ``host``:``port`` (beside a sink on another loopback address)."""
    server = ScriptedServer(handler)  # type: ignore[arg-type]
    listeners = await trio.open_tcp_listeners(port, host=host)
    nursery.start_soon(trio.serve_listeners, server._handle, listeners)
    return server


def test_rules_are_checked_when_the_file_is_read() -> None:
    shaping = Shaping.from_mapping({
        "reactions": [{"destination": "*.yahoodns.net", "code": "421", "text": r"\[TSS04\]",
                       "action": "suspend", "duration": "1h"},
                      {"enhanced": r"4\.7\.650", "action": "limit", "connections": 2,
                       "rate": "60/min", "duration": "30m", "name": "outlook"}],
        "warmup": [{"destination": "*.google.com", "daily": 500, "growth": 2}],
    })
    suspend, limit = shaping.reactions
    assert (suspend.action, suspend.duration, suspend.destination) == ("suspend", 3600.0,
                                                                      "*.yahoodns.net")
    assert (limit.connections, limit.rate, limit.name) == (2, 1.0, "outlook")
    assert shaping.warmup[0].cap(0) == 500 and shaping.warmup[0].cap(3) == 4000
    bad = [
        ({"action": "suspend", "duration": "1h"}, "at least one of code, enhanced, text"),
        ({"code": "421", "action": "nap", "duration": "1h"}, "action must be one of"),
        ({"code": "(", "action": "suspend", "duration": "1h"}, "not a valid regular expression"),
        ({"code": "421", "action": "suspend"}, "needs a duration"),
        ({"code": "421", "action": "limit", "duration": "1m"}, "needs connections and/or rate"),
        ({"code": "421", "action": "bounce-rest", "duration": "1m"}, "no duration"),
        ({"code": "421", "action": "suspend", "duration": "1h", "speed": 1}, "unknown key"),
    ]
    for rule, message in bad:
        with pytest.raises(ShapingError, match=r"\[\[reactions\]\] #1: .*" + message):
            Shaping.from_mapping({"reactions": [rule]})


@pytest.mark.parametrize("where", ["greeting", "rcpt"])
async def test_tss04_suspends_its_destination_while_another_keeps_flowing(
    where: str, autojump_clock: trio.abc.Clock,
) -> None:
    """Yahoo's TSS04 on one destination (as its greeting, or to RCPT): no new
    connection there for the configured 30 minutes, while the other
    destination is served at once."""
    connected_at: list[float] = []
    begin = trio.current_time()

    def early() -> bool:  # the provider defers whatever comes in its first seconds
        return trio.current_time() < begin + 5

    def rcpt(address: str, n: int) -> str:
        return TSS04 if where == "rcpt" and early() else "250 2.1.5 Ok\r\n"

    mini = MiniSMTP(rcpt=rcpt)

    async def provider(conn: Conn) -> None:
        connected_at.append(trio.current_time())
        if where == "greeting" and early():
            await conn.send(TSS04)
            return
        await mini(conn)

    shaping = Shaping.from_mapping({"reactions": [{
        "destination": "*.yahoo.test", "code": "421", "enhanced": r"4\.7\.0",
        "text": r"\[TSS04\]", "action": "suspend", "duration": "30m", "name": "yahoo-tss04",
    }]})
    actions: list[ShapingAction] = []
    delivered_at: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, host="127.0.0.1", latency=0.01)
        await serve_scripted(nursery, provider, "127.0.0.2", sink.port)
        dns = DNSServer()
        dns_port = await nursery.start(dns.serve)
        dns.add("mx.other.test", "A", "127.0.0.1")
        dns.add("other.test", "MX", "10 mx.other.test.")
        dns.add("mx.yahoo.test", "A", "127.0.0.2")
        dns.add("yahoo.test", "MX", "10 mx.yahoo.test.")
        config = MailerConfig(
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=sink.port),
            secure="none", shaping=shaping, on_shaping_action=actions.append,
        )
        start = trio.current_time()

        def record(result: Result) -> None:
            if result.status is Status.DELIVERED:
                delivered_at[result.recipient] = trio.current_time() - start

        async with Mailer(config) as mailer:
            summary = await mailer.send(
                "news@sender.test", TEMPLATE,
                people("yahoo.test", 20, "y") + people("other.test", 200, "o"),
                on_result=record,
            )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 220
    [action] = actions
    assert (action.kind, action.destination, action.rule) == (
        "suspend", "mx:mx.yahoo.test", "yahoo-tss04")
    assert "[TSS04]" in str(action.reply) and "[TSS04]" in action.describe()
    # the other destination flowed meanwhile: all 200 within the first minute
    other = [t for address, t in delivered_at.items() if address.endswith("@other.test")]
    assert len(other) == 200 and max(other) < 60
    # yahoo: the refused sessions, then nothing until the 30 minutes were over
    refused = [t for t in connected_at if t < begin + 5]
    later = [t for t in connected_at if t >= begin + 5]
    assert refused and later
    assert min(later) >= min(refused) + 1800
    assert all(t >= 1800 for a, t in delivered_at.items() if a.endswith("@yahoo.test"))


async def test_limit_action_holds_the_lower_connection_cap(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A matching reply lowers the destination's cap from 8 sessions to 1 for
    10 minutes: the sink never sees more than one session once it took hold."""
    shaping = Shaping.from_mapping({
        "default": {"connections": 8},
        "reactions": [{"code": "451", "enhanced": r"4\.3\.0", "text": "local part",
                       "action": "limit", "connections": 1, "duration": "10m"}],
    })
    acted: list[float] = []
    samples: list[tuple[float, int]] = []

    def on_action(action: ShapingAction) -> None:
        acted.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.05)

        async def watch() -> None:
            while True:
                samples.append((trio.current_time(), sink.stats.active_sessions))
                await trio.sleep(0.005)

        nursery.start_soon(watch)
        recipients = people("example.test", 300)
        recipients.insert(40, Recipient("tempfail@example.test", {"name": "t"}))
        async with Mailer(MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none",
                                       shaping=shaping, on_shaping_action=on_action,
                                       window=4, retry_for=30)) as mailer:
            summary = await mailer.send("news@sender.test", TEMPLATE, recipients)
        nursery.cancel_scope.cancel()
    assert summary.delivered == 300 and summary.deferred == 1
    assert len(acted) == 1
    assert max(n for t, n in samples if t < acted[0]) > 1  # 8 were allowed before
    # sessions busy when it fired finish their pipelined window, then close
    after = [n for t, n in samples if t > acted[0] + 1.0]
    assert after and max(after) == 1


async def test_bounce_rest_bounces_the_job_s_remaining_recipients_there() -> None:
    shaping = Shaping.from_mapping({
        "default": {"connections": 1},
        "reactions": [{"code": "550", "text": "Permanent failure requested",
                       "action": "bounce-rest", "name": "blocked"}],
    })
    actions: list[ShapingAction] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        config = MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none",
                              shaping=shaping, on_shaping_action=actions.append, window=1)
        results: list[Result] = []
        async with Mailer(config) as mailer:
            recipients = [Recipient("permfail@example.test", {"name": "p"}),
                          *people("example.test", 30)]
            first = await mailer.send("news@sender.test", TEMPLATE, recipients,
                                      on_result=results.append)
            # another job to the same destination is not affected
            second = await mailer.send("news@sender.test", TEMPLATE, people("example.test", 5))
        nursery.cancel_scope.cancel()
    assert first.bounced == 31 and first.delivered == 0
    assert [a.kind for a in actions] == ["bounce-rest"]
    rest = [r for r in results if r.recipient != "permfail@example.test"]
    assert {r.status for r in rest} == {Status.BOUNCED}
    reply = str(rest[0].reply)
    assert reply.startswith("550 5.7.1") and "Permanent failure requested" in reply
    assert "blocked" in reply
    assert second.delivered == 5 and sink.stats.recipients == 5


async def test_cli_prints_each_action_and_keeps_warmup_counters_beside_the_journal(
    tmp_path: Path,
) -> None:
    """``bulkmail send --shaping``: a reply rule's action is one stderr line
    with the reply; recipients past a warm-up cap end deferred with the reason
    (exit 75), and a rerun the same day finds the cap still used up."""
    from .test_cli_send import report, run, send_args

    (tmp_path / "rules.toml").write_text(
        '[[reactions]]\ncode = "451"\ntext = "local part"\naction = "suspend"\n'
        'duration = "1h"\nname = "local-tempfail"\n'
    )
    (tmp_path / "warmup.toml").write_text(
        '[[warmup]]\ndestination = "example.test"\ndaily = 5\n'
    )
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: hi\n\nHello.\n")
    one = tmp_path / "one"
    one.mkdir()
    (one / "list.txt").write_text("tempfail@example.test\n")
    two = tmp_path / "two"
    two.mkdir()
    (two / "list.txt").write_text("".join(f"u{i}@example.test\n" for i in range(11)))
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        suspended = await run(send_args(one, sink.port, one / "list.txt", message, "--shaping",
                                        str(tmp_path / "rules.toml"), "--retry-for", "1m"), one)
        args = send_args(two, sink.port, two / "list.txt", message, "--shaping",
                         str(tmp_path / "warmup.toml"), "--retry-for", "1s")
        capped = await run(args, two)
        first_report = report(two)
        rerun = await run(args, two)
        nursery.cancel_scope.cancel()
    assert suspended.returncode == 75, suspended.stderr
    lines = [line for line in suspended.stderr.decode().splitlines() if "shaping:" in line]
    assert len(lines) == 1
    assert lines[0].startswith(f"shaping: suspend relay:127.0.0.1:{sink.port} for 3600s")
    assert "(local-tempfail)" in lines[0] and "451 4.3.0 Temporary failure" in lines[0]
    assert capped.returncode == 75, capped.stderr
    statuses = Counter(r["status"] for r in first_report.values())
    assert statuses == {"delivered": 5, "deferred": 6}
    reasons = {(r["code"], r["enhanced"], r["reply"])
               for r in first_report.values() if r["status"] == "deferred"}
    [(code, enhanced, reason)] = reasons
    assert (code, enhanced) == (451, "4.7.0")
    assert str(reason).startswith("warm-up cap for example.test from default reached (5/day);"
                                  " next window ")
    assert (two / "warmup.sqlite").is_file()
    assert rerun.returncode == 75
    assert sink.stats.recipients == 5  # the rerun found today's cap used up


async def test_suspend_source_moves_the_destination_to_the_other_address(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A reply to one egress address suspends that address only: the rest
    goes out from the other one, and the suspended one is back afterwards."""
    shaping = Shaping.from_mapping({
        "default": {"source_addresses": ["127.0.0.5", "127.0.0.6"], "connections": 1},
        "reactions": [{"code": "451", "text": "local part", "action": "suspend-source",
                       "duration": "20m"}],
    })
    actions: list[ShapingAction] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        config = MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none",
                              shaping=shaping, on_shaping_action=actions.append, window=1,
                              retry_for=10)
        async with Mailer(config) as mailer:
            # the first session (from 127.0.0.5) meets the tempfail
            first = await mailer.send("news@sender.test", TEMPLATE, [
                Recipient("tempfail@example.test", {"name": "t"}), *people("example.test", 10),
            ])
            during = await mailer.send("news@sender.test", TEMPLATE, people("b.test", 10, "b"))
            await trio.sleep(20 * 60)
            after = await mailer.send("news@sender.test", TEMPLATE, people("c.test", 10, "c"))
        nursery.cancel_scope.cancel()
    [action] = actions
    assert (action.kind, action.source) == ("suspend-source", "127.0.0.5")
    assert "suspend-source 127.0.0.5" in action.describe()
    assert (first.delivered, during.delivered, after.delivered) == (10, 10, 10)
    peers: dict[str, set[str]] = {m.rcpts[0].partition("@")[2]: set() for m in sink.messages}
    for m in sink.messages:
        peers[m.rcpts[0].partition("@")[2]].add(m.peer)
    assert peers["b.test"] == {"127.0.0.6"}  # suspended address unused meanwhile
    assert "127.0.0.5" in peers["c.test"]  # and used again afterwards


async def test_limit_action_lowers_the_rate_for_its_duration(
    autojump_clock: trio.abc.Clock,
) -> None:
    shaping = Shaping.from_mapping({"reactions": [{
        "code": "451", "text": "local part", "action": "limit", "rate": "60/min",
        "duration": "1m",
    }]})
    delivered_at: list[float] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        config = MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none",
                              shaping=shaping, retry_for=10)
        async with Mailer(config) as mailer:
            await mailer.send("news@sender.test", TEMPLATE,
                              [Recipient("tempfail@example.test", {"name": "t"})])
            start = trio.current_time()

            def record(result: Result) -> None:
                delivered_at.append(trio.current_time() - start)

            slowed = await mailer.send("news@sender.test", TEMPLATE, people("example.test", 100),
                                       on_result=record)
        nursery.cancel_scope.cancel()
    assert slowed.delivered == 100
    # one a second while the minute lasts (100 would take 100 s) ...
    during = [t for t in delivered_at if t < 55]
    assert 50 <= len(during) <= 56
    # ... then as fast as the sink takes them, once the starts each session
    # had already reserved on the paced schedule are through
    assert max(delivered_at) < 90


CONTRIB = Path(__file__).parent.parent / "contrib" / "shaping-providers.toml"


def reply_of(line: str) -> Reply:
    code, _, rest = line.partition(" ")
    return Reply(int(code), (rest,), parse_enhanced(int(code), rest))


@pytest.mark.parametrize(("destination", "line", "rule"), [
    ("mta5.am0.yahoodns.net", "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"
     " due to unexpected volume or user complaints - 4.16.55.1", "yahoo-tss04"),
    ("mta5.am0.yahoodns.net", "421 4.7.0 [TS02] Messages from 192.0.2.1 temporarily deferred",
     "yahoo-ts0x"),
    ("gmail-smtp-in.l.google.com", "421 4.7.28 Gmail has detected an unusual rate of"
     " unsolicited mail originating from your IP address.", "gmail-4.7.28"),
    ("aspmx.l.google.com", "421 4.7.0 Our system has detected an unusual rate of unsolicited"
     " mail originating from your IP address.", "gmail-rate-limited"),
    ("aspmx.l.google.com", "550 5.7.26 Unauthenticated email from example.org is not accepted"
     " due to domain's DMARC policy.", "gmail-dmarc"),
    ("example-com.mail.protection.outlook.com", "451 4.7.650 The mail server [192.0.2.1] has"
     " been temporarily rate limited due to IP reputation.", "microsoft-4.7.650"),
    ("hotmail-com.olc.protection.outlook.com", "550 5.7.708 Service unavailable. Access denied,"
     " traffic not accepted from this IP.", "microsoft-ip-blocked"),
    ("mx.example.net", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using"
     " zen.spamhaus.org", "blocklisted"),
    ("mx.example.net", "421 4.7.0 [TSS04] looks like Yahoo but is not", None),
    ("aspmx.l.google.com", "450 4.2.1 The user you are trying to contact is receiving mail at"
     " a rate that prevents additional messages from being delivered.", None),
])
def test_the_contrib_provider_rules_match_their_documented_replies(
    destination: str, line: str, rule: str | None
) -> None:
    shaping = Shaping.load(CONTRIB)
    rules = rules_for(shaping.reactions, [destination])
    found = first_match(rules, reply_of(line))
    assert (found.name if found is not None else None) == rule


def test_an_idle_destination_under_a_suspension_keeps_its_health() -> None:
    """The long-tail clean-up forgets an idle destination's health only when
    nothing is in force: a suspension must survive its pool going idle, or
    the next recipient there starts (and logs) the action all over again --
    the CLI test above printed the line twice when that happened."""
    from bulkmail.delivery.health import HealthRegistry

    registry = HealthRegistry(pipelining=True)
    health = registry.of("relay:127.0.0.1:25", 4)
    reply = Reply(451, ("4.3.0 local part",), "4.3.0")
    action = ShapingAction("suspend", "relay:127.0.0.1:25", reply, "r", 3600.0, 3600.0,
                           3600.0, None, None, None)
    assert health.apply(action)
    registry.release("relay:127.0.0.1:25")
    assert registry.of("relay:127.0.0.1:25", 4) is health
    assert not health.apply(action)  # still in force: not started (nor logged) again
    registry.release("idle:elsewhere")
    other = registry.of("mx:mx.example.net", 4)
    registry.release("mx:mx.example.net")
    assert registry.of("mx:mx.example.net", 4) is not other  # nothing in force: forgotten


async def test_a_rule_can_match_the_bounce_class_of_the_reply(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``class = "rate-limited"``: the sink's Gmail-style ``450 4.2.1 ... at a
    rate that prevents ...`` suspends the destination; its ``451 4.3.0``
    (class ``transient``) to the tempfail address before it does not."""
    shaping = Shaping.from_mapping({
        "default": {"connections": 1},
        "reactions": [{"class": "rate-limited", "action": "suspend", "duration": "10m",
                       "name": "slow-down"}],
    })
    actions: list[ShapingAction] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, defer_rate=1.0, seed=1)
        config = MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none",
                              shaping=shaping, on_shaping_action=actions.append, window=1,
                              retry_for=5)
        async with Mailer(config) as mailer:
            summary = await mailer.send("news@sender.test", TEMPLATE, [
                Recipient("tempfail@example.test", {"name": "t"}), *people("example.test", 5),
            ])
        nursery.cancel_scope.cancel()
    assert summary.deferred == 6
    [action] = actions
    assert (action.kind, action.rule) == ("suspend", "slow-down")
    assert str(action.reply).startswith("450 4.2.1 The user you are trying to contact")
    # the other four were held, not tried: one RCPT each for tempfail and u0
    assert sink.stats.deferred == 2


def test_class_in_a_rule_is_checked_and_may_list_several() -> None:
    rule = Shaping.from_mapping({"reactions": [
        {"class": ["rate-limited", "spam-block"], "code": "4..", "action": "suspend",
         "duration": "1m"}]}).reactions[0]
    assert rule.classes == {"rate-limited", "spam-block"}
    greylisted = Reply(451, ("4.7.1 Greylisted, please try again later",), "4.7.1")
    blocked = Reply(554, ("5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org",),
                    "5.7.1")
    tempfail = Reply(451, ("4.3.0 Temporary failure",), "4.3.0")
    assert first_match((rule,), greylisted) is rule  # rate-limited, and a 4xx
    assert first_match((rule,), blocked) is None  # spam-block, but not a 4xx
    assert first_match((rule,), tempfail) is None  # a 4xx, but transient
    for bad, message in [("slow", "unknown bounce class"), ([], "a bounce class or a list"),
                         (5, "a bounce class or a list")]:
        with pytest.raises(ShapingError, match=r"\[\[reactions\]\] #1: .*" + message):
            Shaping.from_mapping({"reactions": [{"class": bad, "action": "suspend",
                                                 "duration": "1m"}]})


async def test_another_workers_suspension_holds_a_destination_until_it_ends(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``Engine.apply_shared`` (what a store worker does with an action it read
    from PostgreSQL): a destination without a pool yet gets the suspension
    when its pool opens; its recipients wait the 20 minutes, no attempt spent,
    then go."""
    reply = Reply(421, ("4.7.0 [TSS04] Messages temporarily deferred",), "4.7.0")
    shaping = Shaping.from_mapping({"reactions": [
        {"code": "421", "text": "TSS04", "action": "suspend", "duration": "20m"}]})
    delivered_at: list[float] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        config = MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none",
                              shaping=shaping, retry_for=3600)
        async with Mailer(config) as mailer:
            now = trio.current_time()
            key = f"relay:127.0.0.1:{sink.port}"
            mailer.engine.apply_shared(ShapingAction(
                "suspend", key, reply, "tss04", 1200.0, now + 1200, 0.0))
            start = trio.current_time()

            def record(result: Result) -> None:
                delivered_at.append(trio.current_time() - start)

            summary = await mailer.send("news@sender.test", TEMPLATE, people("example.test", 5),
                                        on_result=record)
        nursery.cancel_scope.cancel()
    assert summary.delivered == 5
    assert min(delivered_at) >= 1200 and max(delivered_at) < 1260
