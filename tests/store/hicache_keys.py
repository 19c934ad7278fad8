#!/usr/bin/env python3
"""SGLang HiCache page keys, computed with Python's hashlib only.

This is an independent implementation of SGLang's get_hash_str (sha256
mode) chained page by page, used by tests/store/test_store_keys.c to check
kvx_store_page_keys:

    key[p] = SHA-256( key[p-1] (32 raw bytes; absent for the first page)
                      || token[p*P] .. token[p*P+P-1], each 4-byte
                         little-endian unsigned )

for every full page of P tokens; a trailing partial page has no key.

Usage:
    hicache_keys.py --page-size 16 [--prior HEX] TOKEN [TOKEN ...]
    echo "1 2 3 ..." | hicache_keys.py --page-size 16
Prints one 64-hex-digit key per full page.
"""
import argparse
import hashlib
import sys


def page_keys(tokens, page_size, prior_hex=None):
    keys = []
    prior = prior_hex
    for start in range(0, len(tokens) - page_size + 1, page_size):
        h = hashlib.sha256()
        if prior:  # SGLang: `if prior_hash: hasher.update(bytes.fromhex(prior_hash))`
            h.update(bytes.fromhex(prior))
        for t in tokens[start:start + page_size]:
            h.update(int(t).to_bytes(4, byteorder="little", signed=False))
        prior = h.hexdigest()
        keys.append(prior)
    return keys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--page-size", type=int, required=True)
    ap.add_argument("--prior", default=None, help="hex key of the page before the first")
    ap.add_argument("tokens", nargs="*")
    a = ap.parse_args()
    toks = a.tokens if a.tokens else sys.stdin.read().replace(",", " ").split()
    for k in page_keys([int(t) for t in toks], a.page_size, a.prior):
        print(k)


if __name__ == "__main__":
    main()
