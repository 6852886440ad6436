"""The echo server that bench/serve.py runs under `python -m uvpy serve`:
a Protocol echo on the inherited listeners (--bind), or on 127.0.0.1:PORT
with reuse_port when a port is given."""

import asyncio

import uvpy


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def main(port=None):
    loop = asyncio.get_running_loop()
    if port is None:
        servers = [await loop.create_server(Echo, sock=s, backlog=1024)
                   for s in uvpy.inherited_sockets()]
    else:
        servers = [await loop.create_server(Echo, "127.0.0.1", int(port), reuse_port=True,
                                            backlog=1024)]
    await asyncio.gather(*(s.serve_forever() for s in servers))
