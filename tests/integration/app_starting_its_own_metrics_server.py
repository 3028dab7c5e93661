"""An application that calls start_metrics_server() at import, as the single-process quick start
does. Under gunicorn every worker imports it and finds the port taken (by the master or a
sibling): that must be logged and counted, and the worker must boot and serve all the same."""
from fastapi import FastAPI

import ragmon

ragmon.start_metrics_server()

app = FastAPI()


@ragmon.monitored_query(operation="echo")
async def echo(text: str) -> dict:
    return {"text": text}


@app.get("/echo")
async def echo_route() -> dict:
    return await echo("ok")


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}
