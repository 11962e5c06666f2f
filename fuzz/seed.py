#!/usr/bin/env python3
"""Builds Doorstep's fuzz seed corpora, fuzz/corpus/<target>/, from files in the repository
and the recorded data beside it. Deterministic: the same inputs give the same files, each
named by the SHA-1 of its content (as libFuzzer names what it adds).

Sources, per target:
  nmea_stream         ../shared/data/nmea logs (gpsd's receivers, the GENIVI drives), cut
                      at line ends into pieces of at most 2 KiB: the first, the last and a
                      few evenly spaced pieces of each log
  nmea_sentence       one line of each sentence type of each log
  envelope_open       proto/tests/vectors/v1.json: each event's signed body, and its whole
                      envelope
  hub_message_open    the same file's hub messages (ack, route, watch, stop note)
  route_json          the route in the golden vectors, and fuzz/seeds/route_json/
  blob_chunk          chunks built here in the v1 chunk layout, and fuzz/seeds/blob_chunk/
  driver_request      the requests in agent/src/driver.rs's module docs, one per file and
                      all in one, and fuzz/seeds/driver_request/
  carrier_<name>      ../shared/data/carriers/<name>_*.json (AfterShip's also wrapped as
                      its webhook posts it, whole and with two checkpoints); ShipEngine
                      also gets the test PEM keys of hub/tests/data (its target also
                      fuzzes the key loaders)
  agent_config        agent/src/config.rs DEFAULT_CONFIG, as is and with every commented
                      key switched on
  hub_config          hub/src/config.rs DEFAULT_CONFIG (+ the [notify] default of
                      hub/src/notify/config.rs), with an inline link secret so validation
                      gets past its first check, as is and with commented keys switched on

Hand-made seeds in fuzz/seeds/<target>/ are copied as they are. Seeds are added beside
whatever the corpus directories already hold (what fuzzing found); --clean empties them
first. Usage:

    python3 fuzz/seed.py [--clean]   # data from ../shared/data, or $DOORSTEP_DATA
"""

import hashlib
import json
import os
import re
import shutil
import struct
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
DATA = Path(os.environ.get("DOORSTEP_DATA", ROOT.parent / "shared" / "data"))
CORPUS = FUZZ / "corpus"

# Bytes per NMEA stream seed, and pieces taken from each log (drives are longer).
PIECE_BYTES = 2048
PIECES_PER_LOG = 4
PIECES_PER_DRIVE = 12


def add(target, data):
    if isinstance(data, str):
        data = data.encode()
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


def pieces(data, size):
    """Splits at line ends into pieces of at most `size` bytes (a longer line alone)."""
    out, current = [], b""
    for line in data.splitlines(keepends=True):
        if current and len(current) + len(line) > size:
            out.append(current)
            current = b""
        current += line
    if current:
        out.append(current)
    return out


def spread(items, count):
    """The first, the last and evenly spaced items between them."""
    if len(items) <= count:
        return items
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def nmea():
    logs = sorted((DATA / "nmea" / "gpsd").glob("*.log")) + sorted((DATA / "nmea" / "drives").glob("*.nmea"))
    if not logs:
        sys.exit(f"seed.py: no NMEA logs under {DATA}/nmea (set DOORSTEP_DATA)")
    for log in logs:
        data = log.read_bytes()
        count = PIECES_PER_DRIVE if log.suffix == ".nmea" else PIECES_PER_LOG
        for piece in spread(pieces(data, PIECE_BYTES), count):
            add("nmea_stream", piece)
        seen = set()
        for line in data.splitlines():
            address = line.split(b",", 1)[0][:8]
            if address not in seen and len(line) <= 128:
                seen.add(address)
                add("nmea_sentence", line)


def golden():
    vectors = json.loads((ROOT / "proto" / "tests" / "vectors" / "v1.json").read_text())
    for target, items in (("envelope_open", vectors["events"]), ("hub_message_open", vectors["hub_messages"])):
        for item in items:
            wire = bytes.fromhex(item["wire_hex"])
            add(target, wire[9:-64])  # the signed body: the target signs it itself
            add(target, wire)  # the whole envelope, for the raw open
    for item in vectors["hub_messages"]:
        route = item["message"].get("route")
        if route:
            add("route_json", json.dumps(route["route"]))
            add("route_json", json.dumps(route["route"], indent=2))


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def chunk(device, total_len, index, data):
    """A photo chunk message: version 1, then postcard (device, sha256, total_len, index, data)."""
    sha = hashlib.sha256(data).digest()
    body = varint(len(device)) + device + sha + varint(total_len) + varint(index) + varint(len(data)) + data
    return b"\x01" + body


def blobs():
    max_chunk = 16 * 1024
    add("blob_chunk", chunk(b"van-17", 100, 0, bytes(range(100))))
    add("blob_chunk", chunk(b"van-17", 2 * max_chunk + 10, 2, b"\xff" * 10))
    add("blob_chunk", chunk(b"van-1", 3 * max_chunk, 1, b"\xab" * max_chunk))
    add("blob_chunk", chunk(b"0", 1, 0, b"\x00"))


def driver():
    docs = (ROOT / "agent" / "src" / "driver.rs").read_text()
    requests = [m.group(1) for m in re.finditer(r"^//! → (.*)$", docs, re.M)]
    if not requests:
        sys.exit("seed.py: found no requests in agent/src/driver.rs's module docs")
    for request in requests:
        add("driver_request", request + "\n")
    add("driver_request", "".join(r + "\n" for r in requests))


def carriers():
    files = sorted((DATA / "carriers").glob("*.json"))
    for name in ("aftership", "easypost", "shipengine"):
        mine = [f for f in files if f.name.startswith(name + "_")]
        if not mine:
            sys.exit(f"seed.py: no {name}_*.json under {DATA}/carriers")
        for f in mine:
            add(f"carrier_{name}", f.read_bytes())
    # AfterShip's fixture is its API's answer; a webhook carries the tracking as `msg`,
    # as hub/src/carrier/aftership.rs's tests wrap it. Trimmed too: libFuzzer works
    # best on inputs under 4 KiB.
    for f in files:
        if f.name.startswith("aftership_"):
            tracking = json.loads(f.read_text())["data"]["tracking"]
            webhook = {"event": "tracking_update", "event_id": "4f6f1f5b-0c1e-4d55-a2a2-8d3c6b9f0e11",
                       "is_tracking_first_tag": False, "msg": tracking, "ts": 1532481000}
            add("carrier_aftership", json.dumps(webhook))
            tracking["checkpoints"] = tracking.get("checkpoints", [])[-2:]
            add("carrier_aftership", json.dumps(webhook, separators=(",", ":")))
    for pem in sorted((ROOT / "hub" / "tests" / "data").glob("*public*.pem")):
        add("carrier_shipengine", pem.read_bytes())


def orders():
    """The order systems' recorded payloads of hub/tests/data, behind the topic byte
    order_webhooks reads first (0, 1: Shopify fulfillments; 2: orders/fulfilled;
    3: WooCommerce), compact too."""
    data = ROOT / "hub" / "tests" / "data"
    for name, picks in (("shopify_fulfillments_create.json", (0, 1)),
                        ("shopify_orders_fulfilled.json", (2,)),
                        ("woocommerce_order_updated.json", (3,))):
        body = json.loads((data / name).read_text())
        for pick in picks:
            add("order_webhooks", bytes([pick]) + json.dumps(body, separators=(",", ":")).encode())


def helpdesks():
    """New-ticket webhooks behind the byte helpdesk_webhooks reads first (0: Zendesk's
    ticket.created event; 1: Freshdesk's automation body), naming parcels or not."""
    zendesk = {
        "type": "zen:event-type:ticket.created", "account_id": 88888888, "id": "01HNFUZZ",
        "time": "2026-12-01T14:12:31Z", "zendesk_event_version": "2022-11-06",
        "subject": "zen:ticket:35436",
        "detail": {"id": "35436", "subject": "Where is 1Z999AA10123456784?",
                   "description": "Tracking 9400111899223856928499, order #10023",
                   "created_at": "2026-12-01T14:10:00Z", "status": "NEW", "tags": ["vip"],
                   "external_id": "", "via": {"channel": "web"}},
        "event": {"meta": {"sequence": {"id": "s1", "position": 1}}},
    }
    add("helpdesk_webhooks", b"\x00" + json.dumps(zendesk, separators=(",", ":")).encode())
    own = dict(zendesk, detail=dict(zendesk["detail"], tags=["doorstep"]))
    add("helpdesk_webhooks", b"\x00" + json.dumps(own).encode())
    freshdesk = {"freshdesk_webhook": {"ticket_id": 81, "ticket_subject": "Parcel?",
                                       "ticket_description": "<p>1Z999AA10123456784</p>",
                                       "ticket_tags": "vip, parcels"}}
    add("helpdesk_webhooks", b"\x01" + json.dumps(freshdesk).encode())
    add("helpdesk_webhooks", b"\x01" + json.dumps(freshdesk["freshdesk_webhook"]).encode())


def rust_const(path, name):
    text = path.read_text()
    # A raw string with any number of hashes: r#"..."#, r##"..."## (a colour like "#0b3d91"
    # inside needs two).
    m = re.search(r'pub const ' + name + r': &str = r(#+)"(.*?)"\1;', text, re.S)
    if not m:
        sys.exit(f"seed.py: no {name} raw string in {path}")
    return m.group(2)


def switched_on(config):
    """Every commented-out `key = value` line and `[section]` header, uncommented."""
    return re.sub(r"^# ((?:\[[\w.]+\]|\[\[[\w.]+\]\]|\w+ = .*))$", r"\1", config, flags=re.M)


def configs():
    agent = rust_const(ROOT / "agent" / "src" / "config.rs", "DEFAULT_CONFIG")
    add("agent_config", agent)
    # A hub key given inline, as the uplink section allows, so validation can pass.
    hub_key = json.loads((ROOT / "proto" / "tests" / "vectors" / "v1.json").read_text())["hub_key"]
    inline = switched_on(agent).replace('"/etc/doorstep/hub.pub"', json.dumps(hub_key["public_key"]))
    add("agent_config", inline)
    add("agent_config", re.sub(r"^\[uplink\.tls\][^\[]*", "", inline, flags=re.M))

    hub = rust_const(ROOT / "hub" / "src" / "config.rs", "DEFAULT_CONFIG")
    notify = rust_const(ROOT / "hub" / "src" / "notify" / "config.rs", "DEFAULT_CONFIG")
    secret = 'link_token_secret = "doorstep fuzz link token secret, 40 bytes"'
    hub = re.sub(r"^link_token_secret = .*$", secret, hub, flags=re.M)
    add("hub_config", hub)
    add("hub_config", hub + "\n" + notify)
    add("hub_config", switched_on(hub))
    add("hub_config", switched_on(hub + "\n" + notify))


def hand_made():
    seeds = FUZZ / "seeds"
    if seeds.is_dir():
        for target in sorted(p for p in seeds.iterdir() if p.is_dir()):
            for f in sorted(target.iterdir()):
                add(target.name, f.read_bytes())


def main():
    # Seeds are added beside what fuzzing has found; --clean starts from seeds alone.
    if "--clean" in sys.argv[1:] and CORPUS.exists():
        shutil.rmtree(CORPUS)
    nmea()
    golden()
    blobs()
    driver()
    carriers()
    orders()
    helpdesks()
    configs()
    hand_made()
    for target in sorted(CORPUS.iterdir()):
        files = list(target.iterdir())
        print(f"{target.name:20} {len(files):5} seeds {sum(f.stat().st_size for f in files):9} bytes")


if __name__ == "__main__":
    main()
