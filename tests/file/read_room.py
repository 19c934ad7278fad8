#!/usr/bin/env python3
"""Reads a kvx file-transport room directory with nothing but the README's
format description: checks every CRC32C, and (given the room id of a room
written by the reference prefill pattern) the bytes of every page.

usage: read_room.py ROOM_DIR [ROOM_ID]"""
import json, os, struct, sys

M64 = (1 << 64) - 1

def crc32c(data, crc=0):
    table = crc32c.table
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF

crc32c.table = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
    crc32c.table.append(c)

def mix(x):  # splitmix64 finaliser, as examples/kvx_example.h
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)

def seed(room, buf, tok):
    return mix(((room * 0x100000001B3) & M64) ^ (buf << 40) ^ tok)

def load(path):
    """The JSON line of a meta or transfer_done (versions 2 to 4: an optional
    "mac hmac-sha256 <hex>" line follows it when the writer had an auth key;
    checking it needs the key: HMAC-SHA-256(key, b"kvx-file-v2\\0" + name +
    b"\\0" + json_line))."""
    text = open(path, "rb").read()
    line, _, rest = text.partition(b"\n")
    assert rest == b"" or (rest.startswith(b"mac hmac-sha256 ") and len(rest) == 81), path
    return json.loads(line)

def main():
    d = sys.argv[1]
    room = int(sys.argv[2]) if len(sys.argv) > 2 else None
    done = load(os.path.join(d, "transfer_done"))
    assert done["format"] == "kvx-file-done" and done["version"] == 4
    pages = 0
    for i in range(done["chunks"]):
        meta = load(os.path.join(d, "kv_chunk_%d.bin.meta" % i))
        data = open(os.path.join(d, "kv_chunk_%d.bin" % i), "rb").read()
        assert len(data) == meta["bytes"], "size"
        assert crc32c(data) == meta["crc32c"], "crc of chunk %d" % i
        assert meta["first_page"] == pages
        n, ps = meta["num_pages"], meta["page_size"]
        for b, buf in enumerate(meta["buffers"]):
            item = buf["item_len"]
            tok_bytes = item // ps
            for j in range(n):
                page = data[buf["offset"] + j * item: buf["offset"] + (j + 1) * item]
                if room is None:
                    continue
                for t in range(ps):
                    tok = (meta["first_page"] + j) * ps + t
                    w0, w1 = struct.unpack_from("<QQ", page, t * tok_bytes)
                    v = seed(room, b, tok)
                    assert w0 == v and w1 == (v + 0xD1B54A32D192ED03) & M64, \
                        "chunk %d buffer %d page %d token %d" % (i, b, j, t)
        pages += n
    assert pages == done["total_pages"]
    if done["aux_index"] >= 0:
        aux = open(os.path.join(d, "metadata.bin"), "rb").read()
        assert len(aux) == done["aux_bytes"] and crc32c(aux) == done["aux_crc32c"], "aux"
        if room is not None:  # aux 1 of the reference pool holds the room id
            assert struct.unpack_from("<Q", aux, done["aux_item_lens"][0])[0] == room
    if done["state_count"]:  # version 4: the request's state rows (HYBRID STATE)
        st = open(os.path.join(d, "state.bin"), "rb").read()
        assert len(st) == done["state_bytes"] == done["state_count"] * sum(done["state_item_lens"])
        assert crc32c(st) == done["state_crc32c"], "state"
    print("room %d: %d chunks, %d pages, all checksums and page bytes verified"
          % (done["room"], done["chunks"], pages))

main()
