"""An independent HTTP/3 client for tq-host's interop tests: aioquic.

Runs one case of the QUIC Interop Runner's (its testcases_quic.py) against
a server and prints what the runner would check as one JSON object:

    python client.py CASE HOST PORT CAFILE PATH...

Cases: handshake, transfer, multiplexing, http3, chacha20, keyupdate,
retry, resumption, zerortt, v2. Every PATH is fetched with GET; the result
lists each response's status, length and SHA-256. Exit code 0 if every
request got an answer, 1 otherwise (the JSON says why).

HTTP/3 by default; with TQ_INTEROP_ALPN=hq-interop, HTTP/0.9 (the runner's
protocol for every case but http3), where a whole response counts as status
200 and a reset stream as status 0.
"""

import asyncio
import hashlib
import json
import os
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h0.connection import H0_ALPN, H0Connection
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, StreamReset
from aioquic.quic.logger import QuicLogger
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import CipherSuite

TIMEOUT = 60.0
HQ = os.environ.get("TQ_INTEROP_ALPN") == "hq-interop"
# POST (with a 5-byte body) instead of GET, for HTTP/3.
POST = os.environ.get("TQ_INTEROP_METHOD") == "POST"


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H0Connection(self._quic) if HQ else H3Connection(self._quic)
        self.pending = {}
        self.handshake = None

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
        if isinstance(event, StreamReset):
            req = self.pending.get(event.stream_id)
            if req is not None and not req["done"].done():
                req["status"] = 0
                req["done"].set_result(None)
            return
        for ev in self.h3.handle_event(event):
            req = self.pending.get(getattr(ev, "stream_id", None))
            if req is None:
                continue
            if isinstance(ev, HeadersReceived):
                for k, v in ev.headers:
                    if k == b":status":
                        req["status"] = int(v)
            elif isinstance(ev, DataReceived):
                req["length"] += len(ev.data)
                req["sha"].update(ev.data)
            if getattr(ev, "stream_ended", False) and not req["done"].done():
                if HQ and req["status"] is None:
                    req["status"] = 200
                req["done"].set_result(None)

    def send_get(self, authority, path):
        sid = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"POST" if POST else b"GET"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        if POST:
            self.h3.send_headers(sid, headers, end_stream=False)
            self.h3.send_data(sid, b"hello", end_stream=True)
        else:
            self.h3.send_headers(sid, headers, end_stream=True)
        req = {
            "path": path,
            "status": None,
            "length": 0,
            "sha": hashlib.sha256(),
            "done": asyncio.get_running_loop().create_future(),
        }
        self.pending[sid] = req
        self.transmit()
        return req

    async def get_all(self, authority, paths):
        reqs = [self.send_get(authority, p) for p in paths]
        await asyncio.wait_for(asyncio.gather(*(r["done"] for r in reqs)), TIMEOUT)
        return [
            {"path": r["path"], "status": r["status"], "length": r["length"],
             "sha256": r["sha"].hexdigest()}
            for r in reqs
        ]


def configuration(case, cafile, ticket=None):
    c = QuicConfiguration(is_client=True, alpn_protocols=H0_ALPN if HQ else H3_ALPN)
    c.load_verify_locations(cafile)
    c.server_name = "localhost"
    c.quic_logger = QuicLogger()
    if case == "chacha20":
        c.cipher_suites = [CipherSuite.CHACHA20_POLY1305_SHA256]
    if case == "v2":
        c.original_version = QuicProtocolVersion.VERSION_2
        c.supported_versions = [QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1]
    if ticket is not None:
        c.session_ticket = ticket
    return c


def key_updates(logger):
    """How many times each side's 1-RTT key was updated, from the qlog."""
    seen = {"client": 0, "server": 0}
    for trace in logger.to_dict()["traces"]:
        for ev in trace["events"]:
            if ev.get("name") == "security:key_updated":
                data = ev.get("data", {})
                if data.get("trigger") == "remote_update" or data.get("trigger") == "local_update":
                    side = "server" if "server" in data.get("key_type", "") else "client"
                    seen[side] += 1
    return seen


async def one_connection(case, host, port, cafile, paths, ticket=None, on_ticket=None,
                         key_update=False):
    authority = f"localhost:{port}"
    config = configuration(case, cafile, ticket)
    async with connect(host, port, configuration=config, create_protocol=Client,
                       session_ticket_handler=on_ticket,
                       wait_connected=ticket is None) as client:
        # With a ticket, requests go out before the handshake completes
        # (0-RTT if the server takes early data).
        if key_update:
            await client.wait_connected()
            client._quic.request_key_update()
        responses = await client.get_all(authority, paths)
        # (aioquic's wait_connected() cannot be used once connect() was
        # told not to wait: the handshake event is watched here instead.)
        for _ in range(200):
            if client.handshake is not None:
                break
            await asyncio.sleep(0.01)
        hs = client.handshake
        out = {
            "responses": responses,
            "version": int(client._quic._version),
            "retries": client._quic._retry_count,
            "alpn": hs.alpn_protocol if hs else None,
            "session_resumed": bool(hs and hs.session_resumed),
            "early_data_accepted": bool(hs and hs.early_data_accepted),
            "cipher": client._quic.tls.key_schedule.cipher_suite.name
            if client._quic.tls.key_schedule else None,
            "key_updates": key_updates(config.quic_logger),
        }
        client.close()
        return out


async def main():
    case, host, port, cafile, *paths = sys.argv[1:]
    port = int(port)
    result = {"case": case}
    try:
        if case in ("resumption", "zerortt"):
            tickets = []
            first = await one_connection(case, host, port, cafile, paths[:1],
                                         on_ticket=tickets.append)
            # The ticket arrives after the handshake; give it a moment.
            for _ in range(50):
                if tickets:
                    break
                await asyncio.sleep(0.05)
            if not tickets:
                raise RuntimeError("the server sent no session ticket")
            second = await one_connection(case, host, port, cafile, paths[1:],
                                          ticket=tickets[-1])
            result["first"] = first
            result.update(second)
            result["responses"] = first["responses"] + second["responses"]
        else:
            result.update(await one_connection(case, host, port, cafile, paths,
                                               key_update=case == "keyupdate"))
        ok = all(r["status"] == 200 for r in result["responses"])
    except Exception as e:  # reported, not raised: the test reads the JSON
        result["error"] = f"{type(e).__name__}: {e}"
        ok = False
    print(json.dumps(result))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    asyncio.run(main())
