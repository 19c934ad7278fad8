"""bench/peers/lmcache.py - LMCache's local disk backend on the same pages (probe)."""
import sys

try:
    import lmcache  # noqa: F401
    from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend  # noqa: F401
except Exception as e:
    print(f"PEER-SKIP LMCache: cannot import its local disk backend: {type(e).__name__}: {e}")
    sys.exit(0)
print("PEER-SKIP LMCache: its local disk backend imports, but bench/peers/lmcache.py does not "
      "drive it yet (it needs an LMCacheEngine config and memory allocator; not written)")
