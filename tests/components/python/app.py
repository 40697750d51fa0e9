"""A wasi:http handler in Python, built into a component by componentize-py
(see scripts/build-components.sh): GET / answers a greeting, POST /echo
streams the request body back."""

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    Method_Post,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from wit_world.imports.streams import StreamError_Closed
from componentize_py_types import Ok, Err


def respond(out: ResponseOutparam, status: int, body: bytes) -> None:
    resp = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    resp.set_status_code(status)
    outgoing = resp.body()
    ResponseOutparam.set(out, Ok(resp))
    stream = outgoing.write()
    # blocking-write-and-flush takes at most 4096 bytes at a time.
    for i in range(0, len(body), 4096):
        stream.blocking_write_and_flush(body[i : i + 4096])
    stream.__exit__(None, None, None)
    OutgoingBody.finish(outgoing, None)


def echo(request: IncomingRequest, out: ResponseOutparam) -> None:
    incoming = request.consume()
    source = incoming.stream()
    resp = OutgoingResponse(Fields.from_list([("content-type", b"application/octet-stream")]))
    outgoing = resp.body()
    ResponseOutparam.set(out, Ok(resp))
    sink = outgoing.write()
    while True:
        try:
            chunk = source.blocking_read(65536)
        except Err as e:
            if isinstance(e.value, StreamError_Closed):
                break
            raise
        for i in range(0, len(chunk), 4096):
            sink.blocking_write_and_flush(chunk[i : i + 4096])
    source.__exit__(None, None, None)
    sink.__exit__(None, None, None)
    OutgoingBody.finish(outgoing, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        path = request.path_with_query() or "/"
        if isinstance(method, Method_Get) and path == "/":
            respond(response_out, 200, b"hello from a Python wasi:http component\n")
        elif isinstance(method, Method_Post) and path == "/echo":
            echo(request, response_out)
        else:
            respond(response_out, 404, b"not found\n")
