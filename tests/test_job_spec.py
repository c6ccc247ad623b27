"""A job's sending options survive the trip through the database's JSON: the
worker rebuilds the same message, signature and schedule from them alone."""

from __future__ import annotations

import base64
import json

import pytest

from bulkmail.dkim_signing import DKIMSigner, load_private_key
from bulkmail.message import Recipient
from bulkmail.store import StoreError
from bulkmail.store.job_spec import JobSpec

MESSAGE = b"From: news@sender.test\r\nSubject: hi\r\n\r\nHello ${name}\r\n"


def signer() -> DKIMSigner:
    _, key = load_private_key(base64.b64encode(bytes(range(32))))  # an Ed25519 seed
    return DKIMSigner("s1", "sender.test", key, "ed25519-sha256")


def test_options_round_trip_through_json_and_render_the_same_message() -> None:
    spec = JobSpec("news@sender.test", MESSAGE + "é\r\n".encode(), verp=True, max_rcpts=7,
                   retry_first=5.0, retry_for=90.0,
                   unsubscribe_url="https://sender.test/u?e=${email}", dkim=signer())
    stored = json.loads(json.dumps(spec.to_options()))
    again = JobSpec.from_options(stored)
    assert again == spec
    ann = Recipient("ann@a.test", {"name": "Ann"})
    first, second = spec.content().raw(ann), again.content().raw(ann)
    assert b"DKIM-Signature:" in first and b"Hello Ann" in first
    # same headers and body; only the signature's timestamp may differ
    assert first.split(b"\r\n\r\n", 1)[1] == second.split(b"\r\n\r\n", 1)[1]
    assert again.retry_policy().first_delay == 5.0


def test_a_template_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(StoreError, match="cannot be sent"):
        JobSpec("news@sender.test", MESSAGE + b"\xe9\r\n").content()


@pytest.mark.parametrize("options", [{}, {"version": 99}, {"version": 1, "sender": "a@b"}])
def test_options_it_cannot_send_are_refused_with_the_reason(options: dict[str, object]) -> None:
    with pytest.raises(StoreError, match="job 7"):
        JobSpec.from_options(options, job=7)
