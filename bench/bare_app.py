"""The peer for bench/ingest.py: the same route on FastAPI + uvicorn, doing no I/O at all."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/webhooks/whatsapp")
async def receive(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"ok": True, "duplicate": False})
