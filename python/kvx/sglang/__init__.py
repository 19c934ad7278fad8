"""kvx inside SGLang: a PD transfer backend (kvx.sglang.conn, registered by
register() through SGLang's plugin mechanism) and a HiCache storage backend
(kvx.sglang.hicache). Importing this package imports nothing of SGLang."""
