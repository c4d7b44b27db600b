"""The sms plugin against the conformance kit, with a scripted SMSC as the provider."""

from __future__ import annotations

import campaignd_sms
import pytest
from smsc import Smsc

from campaignd.testing.conformance import Target, TransportChannelContract, closed_port


class TestSms(TransportChannelContract):
    """The "sms" type keeps the contract, through an smpp transport."""

    @pytest.fixture
    def target(self, smsc: Smsc, monkeypatch: pytest.MonkeyPatch) -> Target:
        """Personalised texts to E.164 numbers, submitted to the local SMSC, answered a little
        slowly so that submits in flight overlap."""
        smsc.answer_delay = 0.01
        monkeypatch.setenv("SMSC_PASSWORD", smsc.password)
        return Target(
            plugin=campaignd_sms,
            channel_type="sms",
            content={"text": "Hi {{ contact.first_name }}, your parcel is on its way.", "sender": "Shop"},
            addresses=["+14155550100", "+14155550101", "+447700900123"],
            delivered=smsc.accepted_count,
            transport_options={
                "kind": "smpp",
                "host": "127.0.0.1",
                "port": smsc.port,
                "system_id": "campaignd",
                "password": {"env": "SMSC_PASSWORD"},
            },
            unreachable_transport_options={
                "kind": "smpp",
                "host": "127.0.0.1",
                "port": closed_port(),
                "system_id": "campaignd",
                "timeout": 5,
            },
            peak_in_flight=lambda: smsc.most_outstanding,
            connections=lambda: smsc.connections,
        )
