#!/usr/bin/env python3
"""Reads one kvx block file (kvx_store.h, format version 1 or 2) with the
standard library only, checks its CRC32C (header, data and, in version 2,
each buffer's), and prints its header as JSON.

Usage: read_block.py PATH [--buffer I]   (--buffer: also print buffer I's
       bytes of the page as hex)
Exit status 0 when the block is intact, 1 otherwise.
"""
import json
import struct
import sys

_T = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 if _c & 1 else 0)
    _T.append(_c)


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _T[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def read_block(path):
    b = open(path, "rb").read()
    if len(b) < 96 or b[:8] != b"KVXBLOCK":
        raise ValueError("not a kvx block")
    ver, hsz, hcrc, flags, cfg = struct.unpack_from("<IIIIQ", b, 8)
    key = b[32:64]
    pages, nb, dlen, dcrc, psz, kvfp = struct.unpack_from("<IIQIIQ", b, 64)
    item_len = list(struct.unpack_from("<%dQ" % nb, b, 96))
    buf_crc = list(struct.unpack_from("<%dI" % nb, b, 96 + 8 * nb)) if ver == 2 else []
    h = bytearray(b[:hsz])
    h[16:20] = bytes(4)
    data = b[hsz:]
    offs = [sum(item_len[:i]) * pages for i in range(nb + 1)]
    bufs_ok = all(crc32c(data[offs[i]:offs[i + 1]]) == c for i, c in enumerate(buf_crc))
    return {
        "version": ver, "header_size": hsz, "flags": flags,
        "config_hash": "%016x" % cfg, "key": key.hex(), "page_count": pages,
        "num_buffers": nb, "data_len": dlen, "page_size": psz,
        "kv_fingerprint": "%016x" % kvfp, "item_len": item_len,
        "file_bytes": len(b),
        "header_crc_ok": crc32c(bytes(h)) == hcrc,
        "data_crc_ok": len(data) == dlen and crc32c(data) == dcrc,
        "buf_crc": ["%08x" % c for c in buf_crc],
        "buf_crc_ok": len(data) == dlen and bufs_ok,
    }, data


def main():
    info, data = read_block(sys.argv[1])
    if "--buffer" in sys.argv:
        i = int(sys.argv[sys.argv.index("--buffer") + 1])
        off = sum(info["item_len"][:i]) * info["page_count"]
        info["buffer_hex"] = data[off:off + info["item_len"][i]].hex()
    print(json.dumps(info))
    ok = (info["header_crc_ok"] and info["data_crc_ok"] and info["buf_crc_ok"]
          and info["version"] in (1, 2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
