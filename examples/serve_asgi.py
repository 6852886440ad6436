"""An ASGI app served by uvicorn in several uvpy worker processes under
uvpy.serve: the supervisor binds the port once, every worker serves it
(one shared accept queue), a crashed worker is restarted, SIGTERM drains
them and SIGHUP replaces them one by one without refusing a connection.

    python examples/serve_asgi.py --port 8000 --workers 2
    curl http://127.0.0.1:8000/          # {"pid": ..., "loop": "Loop"}
    kill -HUP <supervisor pid>           # new workers, new code, no downtime

uvicorn's own `--workers` does much the same for ASGI apps (see
docs/serve.md for when to use which); this shows that any asyncio server,
uvicorn's included, runs under uvpy.serve unchanged.
"""

import argparse
import asyncio
import json
import logging
import os

import uvicorn

import uvpy


async def app(scope, receive, send):
    """The smallest ASGI app: which process and loop answered."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = json.dumps({"pid": os.getpid(),
                       "loop": type(asyncio.get_running_loop()).__name__}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def main():
    # loop="none": uvpy.serve made this worker's loop already.
    config = uvicorn.Config(app, loop="none", lifespan="on", access_log=False)
    await uvicorn.Server(config).serve(sockets=uvpy.inherited_sockets())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s: %(message)s")
    uvpy.serve(main, workers=args.workers, bind=f"{args.host}:{args.port}")
