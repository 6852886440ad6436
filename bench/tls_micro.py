"""Cost of the ssl module's C methods on one 1 KiB record over MemoryBIOs: what
the native record path (bindings/tls.cc) avoids by calling OpenSSL directly.
Run: python bench/tls_micro.py (needs trustme). See docs/tls.md."""
import ssl
import time

import trustme

ca = trustme.CA()
sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH); ca.issue_cert("localhost").configure_cert(sctx)
cctx = ssl.create_default_context(); ca.configure_trust(cctx)
ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
c = cctx.wrap_bio(ci, co, server_hostname="localhost"); s = sctx.wrap_bio(si, so, server_side=True)
for _ in range(10):
    for obj in (c, s):
        try: obj.do_handshake()
        except ssl.SSLWantReadError: pass
    si.write(co.read()); ci.write(so.read())
c.write(b"x"); si.write(co.read())
try: s.read(10)
except ssl.SSLWantReadError: pass
ci.write(so.read())
payload = b"y" * 1024
N = 100000
raw_c, raw_s = c._sslobj, s._sslobj
WantRead = ssl.SSLWantReadError
# one direction: client encrypts (prepare records), server decrypts via C methods as vectorcall would
records, records2 = [], []
for _ in range(N):
    raw_c.write(payload); records.append(co.read())
for _ in range(N):
    raw_c.write(payload); records2.append(co.read())
t0 = time.perf_counter_ns()
for rec in records:
    si.write(rec)
    data = raw_s.read(262144)
    try:
        raw_s.read(262144)
    except WantRead:
        pass
t1 = time.perf_counter_ns()
for rec in records2:
    si.write(rec)
    data = raw_s.read(262144)
t2 = time.perf_counter_ns()
for _ in range(N):
    raw_s.write(payload); out = so.read()
t3 = time.perf_counter_ns()
for rec in records:
    try:
        raw_s.read(262144)
    except WantRead:
        pass
t4 = time.perf_counter_ns()
print(f"C-method receive path (BIO.write + read + read->WantRead): {(t1-t0)/N:.0f} ns/record")
print(f"  of which the trailing WantRead read:                   {(t1-t0-(t2-t1))/N:.0f} ns")
print(f"C-method send path (SSLSocket.write + BIO.read):          {(t3-t2)/N:.0f} ns/record")
print(f"read() raising WantRead alone:                            {(t4-t3)/N:.0f} ns")
