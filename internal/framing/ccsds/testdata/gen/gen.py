#!/usr/bin/env python3
"""Build the CCSDS fixtures with gr-satellites, an implementation nobody on
Meridian wrote.

Headers are built and parsed back with gr-satellites' own `construct`
structures (satellites/ccsds/space_packet.py, satellites/ccsds/telemetry.py)
and CRCs come from its crc16_ccitt_false (satellites/check_crc16_ccitt_false.py).
The files are loaded from their paths: the package's __init__ imports GNU
Radio, which is not needed for them. check_crc16_ccitt_false.py imports
gnuradio, pmt and numpy at module level for its GNU Radio block; empty stand-in
modules are registered for those names so that the file itself loads
unchanged, and only its pure function crc16_ccitt_false is used.

Pinned (Debian bookworm packages):
  gr-satellites      4.4.0-2+b7
  python3-construct  2.10.68+dfsg1-2
  python3            3.11 (Debian's /usr/bin/python3)

Run through gen.sh, which fetches those packages; see ../README.md.
Usage: gen.py GRS_DIST_PACKAGES OUT_DIR
"""
import importlib.util
import json
import os
import random
import sys
import types

GRS = sys.argv[1]  # .../dist-packages holding satellites/ (and construct/)
OUT = sys.argv[2]
sys.path.insert(0, GRS)

import construct  # noqa: E402  (from python3-construct, on GRS)


def load(name, rel):
    spec = importlib.util.spec_from_file_location(name, os.path.join(GRS, 'satellites', rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Stand-ins for the GNU Radio runtime, so check_crc16_ccitt_false.py loads.
gnuradio = types.ModuleType('gnuradio')
gnuradio.gr = types.SimpleNamespace(basic_block=object)
sys.modules['gnuradio'] = gnuradio
sys.modules['pmt'] = types.ModuleType('pmt')
sys.modules['numpy'] = types.ModuleType('numpy')

space_packet = load('grs_space_packet', 'ccsds/space_packet.py')
telemetry = load('grs_telemetry', 'ccsds/telemetry.py')
crcmod = load('grs_crc16', 'check_crc16_ccitt_false.py')
crc16 = crcmod.crc16_ccitt_false

assert crc16(b'123456789') == 0x29B1, 'gr-satellites CRC is not CRC-16/CCITT-FALSE'

rng = random.Random(20261201)
ASM = bytes.fromhex('1ACFFC1D')
PRINTABLE = bytes(range(0x20, 0x7f))


def text(n):
    # Printable ASCII: the Node parser returns packet data as a string.
    return bytes(rng.choice(PRINTABLE) for _ in range(n))


def write(name, data):
    with open(os.path.join(OUT, name), 'wb') as f:
        f.write(data)


def write_json(name, obj):
    with open(os.path.join(OUT, name), 'w') as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write('\n')


def packet(apid, seq_flags, count, payload, ptype=0, sec=False):
    hdr = space_packet.PrimaryHeader.build(dict(
        ccsds_version=0, packet_type=ptype, secondary_header_flag=sec,
        AP_ID=apid, sequence_flags=seq_flags,
        packet_sequence_count_or_name=count, data_length=len(payload) - 1))
    return hdr + payload


def describe_packet(pkt, offset, crc):
    h = space_packet.PrimaryHeader.parse(pkt[:6])
    d = dict(offset=offset, length=len(pkt), version=h.ccsds_version,
             type=h.packet_type, sec_header=bool(h.secondary_header_flag),
             apid=h.AP_ID, seq_flags=h.sequence_flags,
             seq_count=h.packet_sequence_count_or_name,
             data_length=h.data_length, hex=pkt.hex())
    if crc:
        d['crc_ok'] = crc16(pkt[:-2]) == int.from_bytes(pkt[-2:], 'big')
    return d


# 1. Space packets: assorted APIDs, 1 to 4090 bytes of data, sequence counts
# that run, wrap at 16384 (APID 0x123), and skip 3 once.
lengths = [1, 2, 5, 10, 58, 100, 250, 1018, 4090] + [rng.randint(1, 300) for _ in range(40)]
counts = {}
packets = []
for i, n in enumerate(lengths):
    apid = [0x000, 0x001, 0x123, 0x7fe][i % 4]
    c = counts.get(apid, 16380 if apid == 0x123 else rng.randint(0, 16383))
    if i == 20:
        c = (c + 3) % 16384  # a gap: 3 missing on this APID
    counts[apid] = (c + 1) % 16384
    packets.append(packet(apid, 3, c, text(n), ptype=i % 2, sec=(i % 3 == 0)))
stream, exp, off = b'', [], 0
for p in packets:
    exp.append(describe_packet(p, off, False))
    stream += p
    off += len(p)
write('packets.bin', stream)
write_json('packets.json', dict(generator='gr-satellites 4.4.0 space_packet.PrimaryHeader', packets=exp))

# 2. The same packets with a CRC-16-CCITT in their last two bytes; every
# fifth has its CRC broken.
stream, exp, off = b'', [], 0
for i, p in enumerate(packets):
    h = space_packet.PrimaryHeader.parse(p[:6])
    # Two placeholder bytes make the header count the CRC; they are cut off
    # and the CRC over header and data takes their place.
    body = packet(h.AP_ID, h.sequence_flags, h.packet_sequence_count_or_name,
                  p[6:] + b'\0\0', ptype=h.packet_type,
                  sec=h.secondary_header_flag)[:-2]
    c = crc16(body)
    if i % 5 == 4:
        c ^= 0x0100
    p2 = body + c.to_bytes(2, 'big')
    exp.append(describe_packet(p2, off, True))
    stream += p2
    off += len(p2)
write('packets_crc.bin', stream)
write_json('packets_crc.json', dict(generator='gr-satellites 4.4.0 space_packet + crc16_ccitt_false', packets=exp))

# 3. The COSMOS example framing: each packet behind the ASM
# (LengthProtocol 64 16 11 1 BIG_ENDIAN 4 0x1ACFFC1D).
stream = b''.join(ASM + p for p in packets)
write('sync_packets.bin', stream)

# 4. CADUs: ASM + 1115-byte TM frames with an FECF. Two spacecraft, three
# virtual channels; the MC count wraps; VC 2 of SCID 0x2A skips 4 frames.
FRAME = 1115
frames, exp, off = [], [], 0
mc = {0x2a: 250, 0x155: 0}
vc = {}
stream = b''
for i in range(24):
    scid = 0x2a if i % 3 else 0x155
    vcid = [0, 2, 7][i % 3]
    if i == 14:
        vc[(scid, vcid)] = (vc.get((scid, vcid), 0) + 4) % 256
    m = mc[scid]
    v = vc.get((scid, vcid), rng.randint(0, 255))
    mc[scid] = (m + 1) % 256
    vc[(scid, vcid)] = (v + 1) % 256
    hdr = telemetry.PrimaryHeader.build(dict(
        transfer_frame_version_number=0, spacecraft_id=scid,
        virtual_channel_id=vcid, ocf_flag=(i % 4 == 0),
        master_channel_frame_count=m, virtual_channel_frame_count=v,
        transfer_frame_secondary_header_flag=False, synch_flag=False,
        packet_order_flag=False, segment_length_id=3,
        first_header_pointer=(i * 37) % 2048))
    data = bytes(rng.getrandbits(8) for _ in range(FRAME - 6 - 2))
    body = hdr + data
    frame = body + crc16(body).to_bytes(2, 'big')
    h = telemetry.PrimaryHeader.parse(frame[:6])
    exp.append(dict(
        offset=off, version=h.transfer_frame_version_number,
        scid=h.spacecraft_id, vcid=h.virtual_channel_id, ocf=bool(h.ocf_flag),
        mc_count=h.master_channel_frame_count, vc_count=h.virtual_channel_frame_count,
        data_field_status=int.from_bytes(frame[4:6], 'big'),
        fecf=int.from_bytes(frame[-2:], 'big'),
        crc_ok=crc16(frame[:-2]) == int.from_bytes(frame[-2:], 'big')))
    stream += ASM + frame
    off += len(ASM) + len(frame)
write('cadu.bin', stream)
write_json('cadu.json', dict(generator='gr-satellites 4.4.0 telemetry.PrimaryHeader + crc16_ccitt_false',
                             asm=ASM.hex(), frame_length=FRAME, frames=exp))
print('wrote fixtures to', OUT)
