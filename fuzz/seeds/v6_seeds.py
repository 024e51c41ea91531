#!/usr/bin/env python3
"""Writes the IPv6 seeds of the engine fuzz target (fuzz/seeds/engine/v6_*).

Each seed: a control byte (forwarding method | prime the table | fix IPv4 checksums), then
packets as [len][bytes], the addresses of fuzz_targets/engine.rs.
"""
import ipaddress, os, struct

VIP6 = ipaddress.IPv6Address("2001:db8:10::80").packed
CLIENT6 = ipaddress.IPv6Address("2001:db8:99::7").packed
S1_6 = ipaddress.IPv6Address("fd00:1::3").packed
ROUTER = ipaddress.IPv6Address("fd00:1::fe").packed

def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF

def ip6(src, dst, nh, upper_proto, ext, seg, csum_at):
    pseudo = src + dst + struct.pack("!IxxxB", len(seg), upper_proto)
    seg = bytearray(seg)
    seg[csum_at:csum_at + 2] = b"\0\0"
    seg[csum_at:csum_at + 2] = struct.pack("!H", csum(pseudo + bytes(seg)))
    return struct.pack("!IHBB", 0x60000000, len(ext) + len(seg), nh, 64) + src + dst + ext + bytes(seg)

def tcp(src, sport, dst, dport, flags, payload=b"", nh=6, ext=b""):
    seg = struct.pack("!HHIIBBHHH", sport, dport, 0x01020304, 0x0a0b0c0d, 0x50, flags, 64240, 0, 0) + payload
    return ip6(src, dst, nh if ext else 6, 6, ext, seg, 16)

def udp(src, sport, dst, dport, payload):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return ip6(src, dst, 17, 17, b"", seg, 6)

def icmp6(src, dst, typ, code, rest, quoted):
    m = struct.pack("!BBHI", typ, code, 0, rest) + quoted
    return ip6(src, dst, 58, 58, b"", m, 2)

SYN, ACK = 0x02, 0x10
hbh_dst = bytes([60, 0, 1, 4, 0, 0, 0, 0, 6, 0, 1, 4, 0, 0, 0, 0])
frag_first = bytes([6, 0, 0, 1, 0, 0, 0, 9])
frag_later = bytes([6, 0, 0, 9, 0, 0, 0, 9])
out = os.path.join(os.path.dirname(__file__), "engine")
for mode in (0, 1, 2):
    nat_port = 8080 if mode == 0 else 80
    to_server = tcp(CLIENT6, 40000, S1_6, nat_port, SYN)
    seeds = {
        "flow": [tcp(CLIENT6, 40000, VIP6, 80, ACK, b"GET / HTTP/1.1\r\n\r\n"),
                 tcp(S1_6, nat_port, CLIENT6, 40000, ACK, b"HTTP/1.1 200 OK\r\n\r\n")],
        "ext": [tcp(CLIENT6, 40001, VIP6, 80, SYN, nh=0, ext=hbh_dst)],
        "frag": [tcp(CLIENT6, 40002, VIP6, 80, SYN, nh=44, ext=frag_first),
                 tcp(CLIENT6, 40002, VIP6, 80, ACK, nh=44, ext=frag_later)],
        "icmp": [icmp6(ROUTER, CLIENT6, 2, 0, 1280, to_server[:120]),
                 icmp6(CLIENT6, VIP6, 1, 4, 0, tcp(VIP6, 80, CLIENT6, 40000, SYN | ACK))],
        "udp": [udp(CLIENT6, 5353, VIP6, 80, b"q" * 40)],
        "big": [tcp(CLIENT6, 40000, VIP6, 80, ACK, b"x" * 180)],
    }
    for name, pkts in seeds.items():
        data = bytes([mode | 4 | 8])
        for p in pkts:
            assert len(p) < 256, (name, len(p))
            data += bytes([len(p)]) + p
        with open(os.path.join(out, f"v6_{name}_{mode}"), "wb") as f:
            f.write(data)
