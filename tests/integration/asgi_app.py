"""The Starlette app test_uvicorn.py serves through uvicorn's own command
line (uvicorn --app-dir tests/integration asgi_app:app ...).

/loop says which loop runs the worker that answered, so a test can tell
that uvicorn really used the loop it was given (and not, say, uvloop).
"""

import asyncio
import hashlib
import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect


async def loop_info(request):
    loop = asyncio.get_running_loop()
    return JSONResponse(
        {"loop": type(loop).__name__, "module": type(loop).__module__,
         "backend": getattr(loop, "backend", None), "pid": os.getpid()}
    )


async def number(request):
    n = request.path_params["n"]
    return JSONResponse({"n": n, "square": n * n})


async def digest(request):
    body = await request.body()
    return JSONResponse({"len": len(body), "sha256": hashlib.sha256(body).hexdigest()})


async def blob(request):
    """n bytes of a repeating pattern: a response bigger than one write."""
    n = request.path_params["n"]
    return Response(bytes(range(256)) * (n // 256) + bytes(range(n % 256)), media_type="application/octet-stream")


async def echo(websocket):
    """Text comes back reversed, bytes as their sha256."""
    await websocket.accept()
    try:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") is not None:
                await websocket.send_text(msg["text"][::-1])
            else:
                await websocket.send_bytes(hashlib.sha256(msg["bytes"]).digest())
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/loop", loop_info),
        Route("/n/{n:int}", number),
        Route("/digest", digest, methods=["POST"]),
        Route("/blob/{n:int}", blob),
        WebSocketRoute("/ws", echo),
    ]
)
