"""SMS throughput benchmark (SPEC §10): a campaign through the smpp transport to a local SMSC.

    .venv/bin/python bench/sms_throughput.py [--recipients N] [--window 10] [--concurrency 50]

In one run:
1. starts a fake SMSC in a process of its own on a free loopback port: it accepts every bind
   and submit_sm at once, and sends a DELIVRD receipt (deliver_sm) for every accepted part;
2. the baseline: a bare loop with the same SMPP codec (aiosmpplib) binds, and submits the same
   number of parts as the campaign will, pre-encoded, keeping `--window` submit_sm outstanding;
   its rate is parts per second;
3. starts the real daemon (SQLite in a temporary state directory) with one smpp transport
   (window `--window`, concurrency `--concurrency`), imports N contacts, and launches a campaign
   whose text is, by thirds, one GSM-7 part, three GSM-7 parts, or two UCS-2 parts. It watches
   the campaign: the send rate is parts / (the moment every message was SENT - LaunchCampaign
   returned), and the receipt lag is the time from then until every message was DELIVERED;
4. runs the bare loop a second time, after the daemon stopped: on a shared machine its rate
   drifts within minutes, so the ratio is to the mean of its two runs (and to each, printed);
5. prints the rates, the ratios, the receipt lag and the daemon's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import pathlib
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Iterator

import grpc
from aiosmpplib import NPI, TON, BindTransceiver, DeliverSmResp, PhoneNumber, SubmitSm
from google.protobuf import struct_pb2

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from audience import Daemon, Profiler, RssSampler, cpu_seconds, database, machine

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc
from campaignd.v1 import resources_pb2 as pb

HEADER = struct.Struct("!IIII")
ONE = "Hi {{ contact.first_name }}, your parcel arrives today between 10 and 12."
THREE = "Hi {{ contact.first_name }}, " + "your order is packed and leaves the warehouse tonight. " * 7
UCS2 = "Привет {{ contact.first_name }}! Ваш заказ отправлен сегодня, ждите курьера завтра утром. 📦"
TEXT = (
    "{% if contact.kind == 'one' %}"
    + ONE
    + "{% elif contact.kind == 'three' %}"
    + THREE
    + "{% else %}"
    + UCS2
    + "{% endif %}"
)
KINDS = ("one", "three", "ucs2")
AREAS = (415, 212, 312, 617, 206, 303, 404, 512, 602, 702, 305, 713, 215, 480, 619, 214, 408, 904, 317, 614)


def phone(i: int) -> str:
    """The i-th recipient's number: +1 AAA 555 NNNN, ten thousand per area code."""
    return f"+1{AREAS[i // 10_000]}555{i % 10_000:04d}"


def load() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the fake SMSC ----------------------------------------------------------------------------------


def _receipt(sequence: int, message_id: bytes) -> bytes:
    text = (
        b"id:"
        + message_id
        + b" sub:001 dlvrd:001 submit date:2512061200 done date:2512061200 stat:DELIVRD err:000 text:"
    )
    body = (
        b"\x00"
        + b"\x01\x01"
        + b"14155550100\x00"
        + b"\x00\x00"
        + b"12345\x00"
        + bytes((0x04, 0, 0))
        + b"\x00\x00"
        + bytes((0, 0, 0, 0))
        + bytes((len(text),))
        + text
    )
    return HEADER.pack(16 + len(body), 0x00000005, 0, sequence) + body


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    ids = itertools.count(1)
    sequences = itertools.count(1)
    try:
        while True:
            head = await reader.readexactly(16)
            length, command, _, sequence = HEADER.unpack(head)
            if length > 16:
                await reader.readexactly(length - 16)
            if command == 0x00000009:  # bind_transceiver
                writer.write(HEADER.pack(21, 0x80000009, 0, sequence) + b"fake\x00")
            elif command == 0x00000004:  # submit_sm
                message_id = b"%x" % next(ids)
                writer.write(
                    HEADER.pack(16 + len(message_id) + 1, 0x80000004, 0, sequence) + message_id + b"\x00"
                )
                writer.write(_receipt(next(sequences), message_id))
            elif command == 0x00000015:  # enquire_link
                writer.write(HEADER.pack(16, 0x80000015, 0, sequence))
            elif command == 0x00000006:  # unbind
                writer.write(HEADER.pack(16, 0x80000006, 0, sequence))
                await writer.drain()
                return
            if writer.transport.get_write_buffer_size() > 1 << 20:
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def run_smsc(port: int) -> None:
    """Serve SMPP on 127.0.0.1:`port` until killed."""

    async def main() -> None:
        server = await asyncio.start_server(_serve, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the bare loop ----------------------------------------------------------------------------------


def parts_of(kind: str) -> int:
    return {"one": 1, "three": 3, "ucs2": 2}[kind]


async def bare_loop(port: int, parts: int, window: int) -> float:
    """Parts per second of a bare aiosmpplib-codec loop with `window` submit_sm outstanding."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(BindTransceiver(sequence_num=1, system_id="bench", password="").pdu())
    head = await reader.readexactly(16)
    await reader.readexactly(HEADER.unpack(head)[0] - 16)
    slots = asyncio.Semaphore(window)
    answered = 0
    done = asyncio.Event()
    payload = ("x" * 153).encode()
    source = PhoneNumber("Shop", TON.ALPHANUMERIC, NPI.UNKNOWN)

    async def receive() -> None:
        nonlocal answered
        while answered < parts:
            head = await reader.readexactly(16)
            length, command, _, sequence = HEADER.unpack(head)
            if length > 16:
                await reader.readexactly(length - 16)
            if command == 0x80000004:
                answered += 1
                slots.release()
            elif command == 0x00000005:
                writer.write(DeliverSmResp(sequence_num=sequence).pdu())
        done.set()

    receiver = asyncio.create_task(receive())
    started = time.perf_counter()
    for i in range(parts):
        await slots.acquire()
        message = SubmitSm(
            sequence_num=i + 2,
            short_message=" ",
            source=source,
            destination=PhoneNumber(f"1415{i:07d}", TON.INTERNATIONAL, NPI.ISDN),
            encoding="gsm0338",
            auto_message_payload=False,
        )
        message.set_encoded_message(payload)
        writer.write(message.pdu())
    await done.wait()
    elapsed = time.perf_counter() - started
    await receiver
    writer.close()
    return parts / elapsed


def measure_bare(port: int, parts: int, window: int, smsc_pid: int, when: str) -> float:
    """Run the bare loop once and print its rate and CPU shares; its parts/s."""
    cpu = Cpu(0, smsc_pid)
    bare = asyncio.run(bare_loop(port, parts, window))
    _, _, smsc_cpu, own_cpu = cpu.used()
    print(
        f"bare aiosmpplib-codec loop {when}, window {window}: {bare:,.0f} parts/s ({parts:,} parts); "
        f"CPU: bare loop {own_cpu * bare / parts:.0%}, SMSC {smsc_cpu * bare / parts:.0%}; "
        f"load average {load()}",
        flush=True,
    )
    return bare


# -- the daemon -------------------------------------------------------------------------------------


def configure(daemon: Daemon, url: str, port: int, window: int, concurrency: int, batch_size: int) -> None:
    daemon.configure(
        url,
        f"[engine]\nbatch_size = {batch_size}\n"
        + "[transports.smsc]\n"
        + 'type = "sms"\n'
        + f"concurrency = {concurrency}\n"
        + f'options = {{ kind = "smpp", host = "127.0.0.1", port = {port}, system_id = "bench", '
        + f"window = {window} }}\n",
    )


def import_contacts(channel: grpc.Channel, n: int) -> None:
    stub = cs_grpc.ContactServiceStub(channel)
    stub.CreateList(
        cs.CreateListRequest(list_id="people", list=cs.ContactList(display_name="people")), timeout=30
    )
    # Recipient-local time is kept inside the 08:00-21:00 quiet hours: a zone where it is 14:00.
    offset = (14 - time.gmtime().tm_hour + 12) % 24 - 12
    zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"

    def requests() -> Iterator[cs.ImportContactsRequest]:
        yield cs.ImportContactsRequest(options=cs.ImportOptions(list="lists/people"))
        for start in range(0, n, 1000):
            rows = []
            for i in range(start, min(n, start + 1000)):
                attributes = struct_pb2.Struct()
                attributes.update({"first_name": f"Ada{i}", "kind": KINDS[i % 3]})
                rows.append(cs.ContactRow(phone=phone(i), time_zone=zone, attributes=attributes))
            yield cs.ImportContactsRequest(rows=rows)

    result = stub.ImportContacts(requests(), timeout=3600)
    if result.created != n:
        raise RuntimeError(f"imported {result.created} of {n} contacts: {result}")


class Cpu:
    """CPU seconds used by the daemon, its child processes, the SMSC and this process, between
    two readings."""

    def __init__(self, daemon: int, smsc: int) -> None:
        self.daemon, self.smsc = daemon, smsc
        self.before = self.read()

    def read(self) -> tuple[float, float, float, float]:
        own, children = cpu_seconds(self.daemon) if self.daemon else (0.0, 0.0)
        times = os.times()
        return own, children + reaped(self.daemon), sum(cpu_seconds(self.smsc)), times.user + times.system

    def used(self) -> tuple[float, float, float, float]:
        """(daemon, its children, SMSC, this process) since the reading made at construction."""
        now = self.read()
        return (
            now[0] - self.before[0],
            now[1] - self.before[1],
            now[2] - self.before[2],
            now[3] - self.before[3],
        )


def reaped(pid: int) -> float:
    """CPU seconds of a process's children that ended and were waited for (a render worker
    replaced during the run), which no live descendant counts any more."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def shares(cpu: tuple[float, float, float, float], seconds: float) -> str:
    """CPU use of each process as a share of one core over `seconds`."""
    names = ("daemon", "render workers", "SMSC", "bench client")
    return ", ".join(
        f"{name} {used / seconds:.0%}"
        for name, used in zip(names, cpu, strict=True)
        if used or name == "SMSC"
    )


def run_campaign(
    daemon: Daemon, n: int, profiler: Profiler, smsc: int
) -> tuple[float, float, tuple[float, float, float, float]]:
    """(seconds from LaunchCampaign returning to every message SENT, then to every one DELIVERED,
    CPU seconds used by each process until every message was SENT)."""
    with grpc.insecure_channel(daemon.address) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        content = struct_pb2.Struct()
        content.update({"text": TEXT, "sender": "Shop"})
        campaign = pb.Campaign(
            display_name="sms throughput",
            audience=pb.Audience(target_lists=["lists/people"]),
            channels=[pb.Channel(channel_id="sms", type="sms", content=content)],
        )
        stub.CreateCampaign(svc.CreateCampaignRequest(campaign_id="bench", campaign=campaign), timeout=30)
        attestation = pb.ConsentAttestation(accepted_by="bench@example.org", terms_version="1")
        with profiler.during("send"):
            stub.LaunchCampaign(
                svc.LaunchCampaignRequest(name="campaigns/bench", attestation=attestation), timeout=600
            )
            launched = time.perf_counter()
            cpu = Cpu(daemon.pid, smsc)
            all_sent, delivered, used = watch(stub, n, cpu)
    return all_sent - launched, delivered - all_sent, used


def watch(
    stub: svc_grpc.CampaignServiceStub, n: int, cpu: Cpu
) -> tuple[float, float, tuple[float, float, float, float]]:
    """(when every message was SENT, when every one was DELIVERED, CPU used until the first), by
    WatchCampaign."""
    all_sent = 0.0
    used = (0.0, 0.0, 0.0, 0.0)
    for update in stub.WatchCampaign(svc.WatchCampaignRequest(name="campaigns/bench"), timeout=3600):
        totals = update.report.totals
        if not all_sent and totals.sent + totals.delivered + totals.failed >= n:
            all_sent = time.perf_counter()
            used = cpu.used()
        if totals.delivered >= n:
            return all_sent, time.perf_counter(), used
        if totals.failed:
            raise RuntimeError(f"{totals.failed} messages failed: {update.report}")
    raise RuntimeError("the watch ended before the campaign did")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000, help=f"at most {len(AREAS) * 10_000:,}")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=500, help="the daemon's [engine] batch_size")
    parser.add_argument("--profile", type=pathlib.Path, help="py-spy the daemon while it sends")
    args = parser.parse_args()
    n = args.recipients
    parts = sum(parts_of(KINDS[i % 3]) for i in range(n))
    print(f"machine: {machine()}", flush=True)
    port = free_port()
    smsc = multiprocessing.Process(target=run_smsc, args=(port,), daemon=True)
    smsc.start()
    assert smsc.pid is not None
    time.sleep(0.5)
    try:
        before = measure_bare(port, parts, args.window, smsc.pid, "before the daemon")
        with database("sqlite", keep=False) as url, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            daemon = Daemon(pathlib.Path(tmp), url)
            configure(daemon, url, port, args.window, args.concurrency, args.batch_size)
            daemon.start()
            sampler = RssSampler(daemon.pid)
            sampler.start()
            try:
                with grpc.insecure_channel(daemon.address) as channel:
                    import_contacts(channel, n)
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                sending, receipts, used = run_campaign(
                    daemon, n, Profiler(args.profile, daemon.pid), smsc.pid
                )
                rss = sampler.high_water_kb() / 1024
            finally:
                daemon.stop()
                sampler.stop()
        # The bare loop again: on a shared machine its rate drifts within minutes, and one run
        # before the daemon alone made the ratio swing with it.
        after = measure_bare(port, parts, args.window, smsc.pid, "after the daemon")
        bare = (before + after) / 2
        rate = parts / sending
        print(
            f"[sqlite] {n:,} recipients, {parts:,} parts (1 GSM-7 / 3 GSM-7 / 2 UCS-2 by thirds): "
            f"{rate:,.0f} parts/s launch -> last SENT; {rate / bare:.2f} x the bare loop "
            f"(the mean of its two runs; {rate / before:.2f} x the one before, "
            f"{rate / after:.2f} x the one after); "
            f"every receipt applied {receipts:.1f} s after the last SENT; daemon peak RSS {rss:.0f} MB",
            flush=True,
        )
        print(
            f"CPU while sending (share of one core): {shares(used, sending)}; daemon CPU per message "
            f"{used[0] / n * 1e6:.0f} us (render workers {used[1] / n * 1e6:.0f} us); load average {load()}",
            flush=True,
        )
    finally:
        smsc.kill()
        smsc.join(5)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
