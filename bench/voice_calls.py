"""Voice calls benchmark: a voice campaign through baresip to a local SIPp that answers.

    .venv/bin/python bench/voice_calls.py [--recipients 500] [--concurrency 50] [--rate 20]
                                          [--prompt-seconds 3]

In one run:
1. starts an RTP sink and SIPp running `answer.xml` from `campaignd_voice.testing` (rings 500 ms,
   answers with G.711, points the call's audio at the sink, waits for the BYE) on free loopback
   ports;
2. starts the real daemon (SQLite in a temporary directory) with one voice transport to SIPp
   (`concurrency`, `rate` as given), imports the recipients through ImportContacts, launches a
   campaign whose prompt is a WAV of `--prompt-seconds`, and polls GetCampaignReport until every
   message has its result;
3. prints: the calls per second reached (answers seen by the sink, first to last) against the
   configured rate and against what the cap allows (Little's law: concurrency / mean call length,
   when that is lower), the most calls open at once at SIPp (from its message log) against the
   cap, and the daemon's and baresip's CPU seconds and peak RSS, with the daemon's CPU per call.

The machine is shared: CPU figures and the rate vary between runs; compare them within a run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pathlib
import sys
import tempfile
import time

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from audience import Daemon, machine
from campaignd_voice.testing import RtpSink, Sipp, write_prompt

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc
from campaignd.v1 import resources_pb2 as pb

TICKS = os.sysconf("SC_CLK_TCK")
ATTESTATION = pb.ConsentAttestation(accepted_by="bench", terms_version="v1")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_kb(pid: int) -> int:
    """A process's peak resident set (VmHWM), in kB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def children_named(pid: int, name: str) -> list[int]:
    """Child processes of `pid` whose command is `name`."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        if command == name and int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def daytime_zone() -> str:
    """A time zone where it is early afternoon, inside the default quiet hours' window."""
    offset = (13 - dt.datetime.now(dt.UTC).hour + 12) % 24 - 12
    return f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--prompt-seconds", type=float, default=3.0)
    args = parser.parse_args()

    print(machine())
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="campaignd-bench-voice-"))
    sink = RtpSink().start()
    peer = Sipp("answer.xml", workdir).start(rtp_sink=sink.port)
    prompt = write_prompt(workdir / "prompt.wav", args.prompt_seconds)
    daemon = Daemon(workdir, "")
    config = daemon.config_path.read_text(encoding="utf-8")
    config = config.replace('[plugins]\nload = ["campaignd.testing.channels"]\n', "")
    config = config.replace("[engine]\nenabled = false\n", "[engine]\nguard_min_sends = 100000\n")
    config += (
        f'[transports.trunk]\ntype = "voice"\nconcurrency = {args.concurrency}\nrate = {args.rate}\n'
        f'options = {{ trunk = "{peer.trunk}", local_address = "127.0.0.1" }}\n'
    )
    daemon.config_path.write_text(config, encoding="utf-8")
    daemon.start()
    try:
        with grpc.insecure_channel(daemon.address) as channel:
            contacts = cs_grpc.ContactServiceStub(channel)
            campaigns = svc_grpc.CampaignServiceStub(channel)
            contacts.CreateList(
                cs.CreateListRequest(list_id="callees", list=cs.ContactList(display_name="callees"))
            )
            # Valid numbers (libphonenumber refuses exchange 000): +1 415 2xx-xxxx.
            rows = [cs.ContactRow(phone=f"+1415{2000000 + i:07d}") for i in range(args.recipients)]
            requests = [cs.ImportContactsRequest(options=cs.ImportOptions(list="lists/callees"))]
            requests += [cs.ImportContactsRequest(rows=rows[i : i + 1000]) for i in range(0, len(rows), 1000)]
            contacts.ImportContacts(iter(requests), timeout=300)
            content: dict[str, str | int] = {
                "caller_id": "+14155550100",
                "audio": str(prompt),
                "ring_timeout": 10,
                "max_call_duration": 60,
            }
            channel_pb = pb.Channel(channel_id="call", type="voice")
            channel_pb.content.update(content)
            campaign = campaigns.CreateCampaign(
                svc.CreateCampaignRequest(
                    campaign_id="bench-voice",
                    campaign=pb.Campaign(
                        display_name="bench",
                        audience=pb.Audience(target_lists=["lists/callees"]),
                        channels=[channel_pb],
                        time_zone=daytime_zone(),
                    ),
                )
            )
            daemon_cpu = cpu_seconds(daemon.pid)
            campaigns.LaunchCampaign(svc.LaunchCampaignRequest(name=campaign.name, attestation=ATTESTATION))
            launched = time.monotonic()
            baresip: list[int] = []
            baresip_cpu = 0.0
            baresip_rss = 0
            while True:
                report = campaigns.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
                if not baresip:
                    baresip = children_named(daemon.pid, "baresip")
                if baresip:
                    try:
                        baresip_cpu = cpu_seconds(baresip[0])
                        baresip_rss = peak_rss_kb(baresip[0])
                    except OSError:
                        pass
                left = report.totals.queued + report.totals.sending + report.totals.retrying
                if report.totals.total and not left:
                    break
                if report.state in (pb.Campaign.COMPLETED, pb.Campaign.FAILED, pb.Campaign.STOPPED):
                    raise SystemExit(
                        f"the campaign ended {pb.Campaign.State.Name(report.state)} with {report.totals}"
                    )
                if time.monotonic() - launched > 3600:
                    raise SystemExit("the campaign did not finish within an hour")
                time.sleep(0.2)
            elapsed = time.monotonic() - launched
            daemon_cpu = cpu_seconds(daemon.pid) - daemon_cpu
            daemon_rss = peak_rss_kb(daemon.pid)
    finally:
        daemon.stop()
        sink.stop()
        peer.stop()
    answers = sorted(s.first for s in sink.streams.values())
    lengths = [s.last - s.first for s in sink.streams.values()]
    calls = len(answers)
    rate = (calls - 1) / (answers[-1] - answers[0]) if calls > 1 else 0.0
    # Ringing (500 ms in the scenario) plus the prompt: how long a call holds its place.
    hold = 0.5 + (sum(lengths) / len(lengths) if lengths else args.prompt_seconds)
    bound = min(args.rate, args.concurrency / hold)
    wire_peak = peer.wire_peak()
    print(
        f"recipients {args.recipients}, concurrency {args.concurrency}, rate {args.rate:g}/s,"
        f" prompt {args.prompt_seconds:g} s"
    )
    print(
        f"results: delivered {report.totals.delivered}, failed {report.totals.failed}"
        f" {dict(report.totals.failed_by_reason)}, outcomes {dict(report.totals.by_outcome)}"
    )
    print(f"calls answered with sound at the peer: {sink.with_sound()} of {calls}")
    print(
        f"call rate (answers, first to last): {rate:.2f}/s = {rate / args.rate:.2f}x the configured"
        f" {args.rate:g}/s; the cap allows {args.concurrency}/{hold:.2f} s ="
        f" {args.concurrency / hold:.2f}/s, so the bound is {bound:.2f}/s: {rate / bound:.2f}x the bound"
    )
    print(f"launch to last result: {elapsed:.1f} s, {calls / elapsed:.2f} calls/s overall")
    print(f"most calls open at once at SIPp: {wire_peak} (cap {args.concurrency})")
    print(
        f"daemon: {daemon_cpu:.2f} CPU s, {1000 * daemon_cpu / max(calls, 1):.1f} ms per call,"
        f" peak RSS {daemon_rss / 1024:.0f} MB"
    )
    print(
        f"baresip: {baresip_cpu:.2f} CPU s, {1000 * baresip_cpu / max(calls, 1):.1f} ms per call,"
        f" peak RSS {baresip_rss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
