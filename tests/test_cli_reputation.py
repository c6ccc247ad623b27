"""The reputation loop through ``bulkmail send``/``report``/``complaints``, as
subprocesses against the sink on 127.0.0.1: hard bounces land in the
suppression store and the next job skips them, user rules change a class, a
signed one-click URL from a run unsubscribes over real HTTP, and a complaint
that names only the original's Message-ID suppresses the right recipient."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from email import message_from_bytes
from pathlib import Path

import httpx
import pytest
import trio

from bulkmail.cli import main
from bulkmail.sink import Sink, SinkConfig
from bulkmail.suppression import SuppressionStore
from bulkmail.unsubscribe import UnsubscribeApp, serve

BULKMAIL = [sys.executable, "-m", "bulkmail"]
SECRET = "the list's unsubscribe secret, 40 chars"
MESSAGE = b"From: news@sender.test\r\nSubject: news\r\n\r\nhello\r\n"


async def start_sink(nursery: trio.Nursery, **kwargs: object) -> Sink:
    sink = Sink(SinkConfig(record_messages=True, **kwargs))  # type: ignore[arg-type]
    await nursery.start(sink.serve)
    return sink


def files(tmp: Path, name: str, addresses: list[str],
          message: bytes = MESSAGE) -> tuple[Path, Path]:
    (tmp / f"{name}.txt").write_text("\n".join(addresses) + "\n")
    (tmp / f"{name}.eml").write_bytes(message)
    return tmp / f"{name}.txt", tmp / f"{name}.eml"


async def send(tmp: Path, port: int, name: str, recipients: Path, message: Path,
               *extra: str) -> subprocess.CompletedProcess[bytes]:
    args = [*BULKMAIL, "send", "--sender", "news@sender.test",
            "--recipients", str(recipients), "--message", str(message),
            "--relay", f"127.0.0.1:{port}", "--tls", "none",
            "--report", str(tmp / f"{name}.jsonl"), "--journal", str(tmp / f"{name}.sqlite"),
            *extra]
    env = {**os.environ, "UNSUB_SECRET": SECRET}
    return await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False,
                                  env=env)


def report(tmp: Path, name: str) -> dict[str, dict[str, object]]:
    lines = (tmp / f"{name}.jsonl").read_text().splitlines()
    return {r["recipient"]: r for r in map(json.loads, lines)}


def bulkmail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BULKMAIL, *args], capture_output=True, text=True, check=False)


async def test_a_hard_bounce_is_stored_and_the_next_job_does_not_send_to_it(
    tmp_path: Path,
) -> None:
    store = tmp_path / "suppress.sqlite"
    before = time.time()
    async with trio.open_nursery() as nursery:
        refusing = await start_sink(nursery, reject_rate=1.0)  # 550 5.1.1 to everyone
        recipients, message = files(tmp_path, "first", ["alice@example.test",
                                                        "Bob@Example.TEST"])
        first = await send(tmp_path, refusing.port, "first", recipients, message,
                           "--suppress-store", str(store))
        accepting = await start_sink(nursery)
        recipients, message = files(tmp_path, "second", ["alice@example.test",
                                                         "bob@example.test",
                                                         "carol@example.test"])
        second = await send(tmp_path, accepting.port, "second", recipients, message,
                            "--suppress-store", str(store))
        nursery.cancel_scope.cancel()
    assert first.returncode == 0, first.stderr
    stderr = first.stderr.decode()
    assert "bounced by class: invalid-recipient 2" in stderr
    assert "suppression store: 2 address(es) added from bounces" in stderr
    assert {r["class"] for r in report(tmp_path, "first").values()} == {"invalid-recipient"}
    with SuppressionStore(store) as s:
        entries = {e.address: e for e in s.entries()}
    assert sorted(entries) == ["Bob@example.test", "alice@example.test"]
    for entry in entries.values():
        assert (entry.reason, entry.bounce_class) == ("bounce", "invalid-recipient")
        assert entry.source is not None and entry.source.startswith("550 5.1.1 ")
        assert before <= entry.added_at <= time.time()

    assert second.returncode == 0, second.stderr
    assert [m.rcpts for m in accepting.messages] == [["carol@example.test"]]
    assert {a: r["status"] for a, r in report(tmp_path, "second").items()} == {
        "alice@example.test": "suppressed", "bob@example.test": "suppressed",
        "carol@example.test": "delivered",
    }

    summary = bulkmail("report", str(tmp_path / "first.sqlite"))
    assert summary.returncode == 0, summary.stderr
    assert "bounced by class: invalid-recipient 2" in summary.stdout.splitlines()


RULES = """
[[rule]]
class = "inactive-mailbox"
code = "550"
text = "requested by the recipient"
"""


async def test_bounce_rules_change_the_class_in_the_report_the_store_and_the_summary(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    addresses = ["permfail@example.test", "tempfail@example.test", "ann@example.test"]
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        recipients, message = files(tmp_path, "plain", addresses)
        plain = await send(tmp_path, sink.port, "plain", recipients, message,
                           "--suppress-store", str(tmp_path / "plain-store.sqlite"),
                           "--retry-for", "0")
        recipients, message = files(tmp_path, "ruled", addresses)
        ruled = await send(tmp_path, sink.port, "ruled", recipients, message,
                           "--suppress-store", str(tmp_path / "ruled-store.sqlite"),
                           "--retry-for", "0", "--bounce-rules", str(rules))
        nursery.cancel_scope.cancel()
    # tempfail stays deferred: exit 75, and a deferral is never suppressed
    assert plain.returncode == ruled.returncode == 75, (plain.stderr, ruled.stderr)
    # 550 5.7.1 "Permanent failure requested by the recipient's local part"
    assert report(tmp_path, "plain")["permfail@example.test"]["class"] == "policy"
    assert report(tmp_path, "ruled")["permfail@example.test"]["class"] == "inactive-mailbox"
    assert report(tmp_path, "ruled")["tempfail@example.test"]["class"] == "transient"
    with SuppressionStore(tmp_path / "plain-store.sqlite") as s:
        assert len(s) == 0  # policy is no hard-bounce class
    with SuppressionStore(tmp_path / "ruled-store.sqlite") as s:
        assert [(e.address, e.bounce_class) for e in s.entries()] == [
            ("permfail@example.test", "inactive-mailbox")]
    assert "bounced by class: inactive-mailbox 1" in ruled.stderr.decode()
    assert "deferred by class: transient 1" in ruled.stderr.decode()

    journal = str(tmp_path / "ruled.sqlite")
    without = bulkmail("report", journal).stdout.splitlines()
    with_rules = bulkmail("report", journal, "--bounce-rules", str(rules)).stdout.splitlines()
    assert "bounced by class: policy 1" in without
    assert "bounced by class: inactive-mailbox 1" in with_rules
    assert "deferred by class: transient 1" in with_rules


async def test_suppress_classes_chooses_what_the_store_gets(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        recipients, message = files(tmp_path, "run", ["permfail@example.test"])
        proc = await send(tmp_path, sink.port, "run", recipients, message,
                          "--suppress-store", str(store), "--suppress-classes", "policy")
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    with SuppressionStore(store) as s:
        entry = s.get("permfail@example.test")
    assert entry is not None and entry.bounce_class == "policy"


def unsubscribe_link(raw: bytes) -> str:
    found = re.search(rb"List-Unsubscribe: <([^>]+)>", raw)
    assert found is not None, raw
    return found.group(1).decode()


async def test_the_signed_link_of_a_run_unsubscribes_over_http_and_the_next_job_skips_it(
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "s.sqlite"
    store = SuppressionStore(store_path)
    signing = ("--list-unsubscribe", "https://news.sender.test/unsubscribe",
               "--unsubscribe-secret-env", "UNSUB_SECRET", "--unsubscribe-list", "november")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        recipients, message = files(tmp_path, "run", ["alice@example.test",
                                                      "bob@example.test"])
        proc = await send(tmp_path, sink.port, "run", recipients, message, *signing)
        assert proc.returncode == 0, proc.stderr
        links = {m.rcpts[0]: unsubscribe_link(m.content) for m in sink.messages}
        assert links["alice@example.test"].startswith(
            "https://news.sender.test/unsubscribe?u=alice@example.test&l=november&t=")
        # a TLS front end passes path and query on to the unsubscribe server
        base = (await nursery.start(serve, UnsubscribeApp(store, SECRET.encode()),
                                    "127.0.0.1:0"))[0]
        alice = links["alice@example.test"].replace("https://news.sender.test", base)
        async with httpx.AsyncClient() as client:
            form = {"List-Unsubscribe": "One-Click"}
            forged = alice.replace("u=alice", "u=bob")
            assert (await client.post(forged, data=form)).status_code == 403
            assert (await client.post(alice, data=form)).status_code == 200
        assert [e.address for e in store.entries()] == ["alice@example.test"]

        sink.messages.clear()
        again = await send(tmp_path, sink.port, "next", recipients, message, *signing,
                           "--suppress-store", str(store_path))
        assert again.returncode == 0, again.stderr
        assert [m.rcpts for m in sink.messages] == [["bob@example.test"]]
        # the signed URL is part of the job: another list is another job
        other = await send(tmp_path, sink.port, "run", recipients, message,
                           *signing[:-1], "december")
        nursery.cancel_scope.cancel()
    store.close()
    assert other.returncode == 2
    assert "belongs to a different job (unsubscribe-token:" in other.stderr.decode()


ARF = b"""\
From: feedback@mailbox.example\r
To: abuse@sender.test\r
Subject: complaint\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r
\r
--b\r
Content-Type: text/plain\r
\r
A complaint about a message from your network.\r
--b\r
Content-Type: message/feedback-report\r
\r
Feedback-Type: abuse\r
User-Agent: mailbox-fbl/1.0\r
Version: 1\r
\r
--b\r
Content-Type: text/rfc822-headers\r
\r
%s\r
--b--\r
"""


def complaint_about(raw: bytes) -> bytes:
    """An ARF report quoting ``raw``'s headers, its recipient redacted (as most are)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return ARF % head


async def test_a_complaint_naming_only_the_message_id_suppresses_its_recipient(
    tmp_path: Path,
) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text("email,name\nalice@example.test,Alice\nbob@example.test,Bob\n")
    template = tmp_path / "msg.eml"
    template.write_bytes(b"From: news@sender.test\r\nSubject: hi ${name}\r\n\r\nhello\r\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        proc = await send(tmp_path, sink.port, "run", csv, template)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    received = {m.rcpts[0]: m.content for m in sink.messages}
    ids = {a: message_from_bytes(raw)["Message-ID"] for a, raw in received.items()}
    assert ids["alice@example.test"] != ids["bob@example.test"]
    arf = tmp_path / "complaint.eml"
    arf.write_bytes(complaint_about(received["bob@example.test"]))
    store = tmp_path / "s.sqlite"
    result = bulkmail("complaints", str(arf), "--store", str(store),
                      "--journal", str(tmp_path / "run.sqlite"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "bob@example.test: suppressed (complaint, found by Message-ID)"]
    with SuppressionStore(store) as s:
        assert [(e.address, e.reason) for e in s.entries()] == [("bob@example.test",
                                                                  "complaint")]


async def test_identical_content_has_one_message_id_that_names_nobody(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        recipients, message = files(tmp_path, "run", ["alice@example.test",
                                                      "bob@example.test"])
        proc = await send(tmp_path, sink.port, "run", recipients, message)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    (shared,) = sink.messages  # one transaction, one rendering
    arf = tmp_path / "complaint.eml"
    arf.write_bytes(complaint_about(shared.content))
    result = bulkmail("complaints", str(arf), "--store", str(tmp_path / "s.sqlite"),
                      "--journal", str(tmp_path / "run.sqlite"))
    assert result.returncode == 1
    assert "Message-ID unknown" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("extra", "env", "says"), [
    (["--unsubscribe-secret-env", "UNSUB_SECRET"], {"UNSUB_SECRET": SECRET},
     "--unsubscribe-secret-env signs the --list-unsubscribe URL"),
    (["--list-unsubscribe", "https://x.test/u", "--unsubscribe-secret-env", "UNSET_VAR"], {},
     "UNSET_VAR (the unsubscribe secret) is not set"),
    (["--list-unsubscribe", "https://x.test/u", "--unsubscribe-secret-env", "UNSUB_SECRET"],
     {"UNSUB_SECRET": "short"}, "at least 16"),
    (["--unsubscribe-list", "november"], {}, "it needs --unsubscribe-secret-env"),
    (["--list-unsubscribe", "https://x.test/u", "--unsubscribe-secret-env", "UNSUB_SECRET",
      "--unsubscribe-list", ""], {"UNSUB_SECRET": SECRET}, "must not be empty"),
    (["--suppress-classes", "invalid-recipient"], {}, "give --suppress-store PATH"),
    (["--suppress-store", "{tmp}/s.sqlite", "--suppress-classes", "dead"], {},
     "unknown bounce class(es) dead"),
    (["--bounce-rules", "{tmp}/missing.toml"], {}, "cannot read rules file"),
    (["--suppress-store", "{tmp}"], {}, "cannot use suppression store"),
])
def test_unusable_reputation_options_are_one_line_and_exit_2(
    extra: list[str], env: dict[str, str], says: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("UNSET_VAR", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    recipients, message = files(tmp_path, "run", ["a@example.test"])
    code = main(["send", "--sender", "news@sender.test", "--recipients", str(recipients),
                 "--message", str(message), "--journal", str(tmp_path / "j.sqlite"),
                 "--retry-for", "0", *(a.format(tmp=tmp_path) for a in extra)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert says in err
    assert not (tmp_path / "j.sqlite").exists()  # refused before the job started
