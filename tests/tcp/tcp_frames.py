#!/usr/bin/env python3
"""tcp_frames.py - the kvx tcp wire format (version 4) in a page of Python.

A minimal prefill side, written from the format described in kvx_tcp.h and
nothing else: it connects to a decode engine's data listener, says HELLO,
proves the shared key when given one (KEY_HEX: the decode's AUTH checked,
then our PROOF, HMAC-SHA-256 as kvx__auth_proof), sends one room's KV pages (one DATA frame per buffer, runs of consecutive
destination pages as one segment) and its aux rows (one DATA frame with the
AUX flag), then waits for the ACK. tests/tcp/test_tcp_hostile.c runs it
against a live decode engine and checks every byte it placed.

usage: tcp_frames.py HOST PORT TOKEN FINGERPRINT ROOM ITEM_LEN NUM_BUFFERS
                     DST_PAGES AUX_SLOT AUX_LENS [KEY_HEX]
  TOKEN (16 bytes), FINGERPRINT, KEY_HEX: hex; DST_PAGES: comma-separated page indices;
  AUX_SLOT: -1 for none; AUX_LENS: comma-separated item_len of each aux buffer.
  Byte j of the i-th page of buffer b is (b * 131 + i * 7 + j) % 251;
  byte j of the row of aux buffer a is (a * 17 + j) % 253.
Prints "ACK <bytes>" and exits 0, or "ERROR <reason>" and exits 1.
"""
import hashlib
import hmac
import os
import socket
import struct
import sys

MAGIC = 0x5458564B  # b"KVXT"
VERSION = 4
HELLO, DATA, ACK, ERROR, AUTH, PROOF = 1, 2, 3, 4, 5, 6
HELLO_AUTH = 1
SEG_AUX = 1
HEADER = struct.Struct("<IBBHQQII")  # magic version type count room body_len flags reserved
SEGMENT = struct.Struct("<IIQQQ")    # buffer flags dst_offset length row_len
# token[16] instance fingerprint stream streams flags nonce[16] tp_rank tp_size pp_rank pp_size
HELLO_BODY = struct.Struct("<16sQQHHI16sHHHH")


def proof(key, label, nonce_a, nonce_b):
    """kvx__auth_proof: HMAC-SHA-256(key, label || 0 || nonce_a || nonce_b)"""
    return hmac.new(key, label + b"\0" + nonce_a + nonce_b, hashlib.sha256).digest()


def header(ftype, count, room, body_len):
    return HEADER.pack(MAGIC, VERSION, ftype, count, room, body_len, 0, 0)


def data_frame(room, segs):
    """segs: [(buffer, flags, dst_offset, payload bytes)]"""
    descs = b"".join(SEGMENT.pack(b, f, off, len(p), 0) for b, f, off, p in segs)
    payload = b"".join(p for _, _, _, p in segs)
    return header(DATA, len(segs), room, len(descs) + len(payload)) + descs + payload


def page_bytes(b, i, item):
    return bytes((b * 131 + i * 7 + j) % 251 for j in range(item))


def aux_bytes(a, n):
    return bytes((a * 17 + j) % 253 for j in range(n))


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("the decode side closed the connection")
        out += chunk
    return out


def main(argv):
    host, port = argv[1], int(argv[2])
    token, fingerprint = bytes.fromhex(argv[3]), int(argv[4], 16)
    key = bytes.fromhex(argv[11]) if len(argv) > 11 else None
    room, item, nbuf = int(argv[5]), int(argv[6]), int(argv[7])
    pages = [int(x) for x in argv[8].split(",") if x]
    aux_slot = int(argv[9])
    aux_lens = [int(x) for x in argv[10].split(",") if x]
    s = socket.create_connection((host, port))
    nonce = os.urandom(16) if key else bytes(16)
    s.sendall(header(HELLO, 0, 0, HELLO_BODY.size) +
              HELLO_BODY.pack(token, 0x7079, fingerprint, 0, 1, HELLO_AUTH if key else 0,
                              nonce, 0, 1, 0, 1))
    if key:
        _, _, ftype, _, _, body_len, _, _ = HEADER.unpack(recv_exact(s, 32))
        body = recv_exact(s, body_len)
        if ftype != AUTH or not hmac.compare_digest(
                body[16:48], proof(key, b"kvx-tcp-decode", nonce, body[:16])):
            print("ERROR the decode did not prove the key")
            return 1
        s.sendall(header(PROOF, 0, 0, 32) + proof(key, b"kvx-tcp-prefill", body[:16], nonce))
    for b in range(nbuf):
        segs, i = [], 0
        while i < len(pages):
            j = i + 1
            while j < len(pages) and pages[j] == pages[j - 1] + 1:
                j += 1
            run = b"".join(page_bytes(b, k, item) for k in range(i, j))
            segs.append((b, 0, pages[i] * item, run))
            i = j
        if segs:
            s.sendall(data_frame(room, segs))
    if aux_slot >= 0:
        s.sendall(data_frame(room, [(a, SEG_AUX, aux_slot * n, aux_bytes(a, n))
                                    for a, n in enumerate(aux_lens)]))
    magic, version, ftype, count, froom, body_len, flags, _ = HEADER.unpack(recv_exact(s, 32))
    body = recv_exact(s, body_len)
    if magic != MAGIC or version != VERSION or froom != room:
        print("ERROR unexpected reply header")
        return 1
    if ftype == ACK:
        print("ACK %d" % struct.unpack_from("<Q", body)[0])
        return 0
    if ftype == ERROR:
        result, rl = struct.unpack_from("<iI", body)
        print("ERROR %d %s" % (result, body[8:8 + rl].decode(errors="replace")))
        return 1
    print("ERROR reply of type %d" % ftype)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
