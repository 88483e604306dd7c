"""The Python hello of `nimbus-bench all`: a wasi:http/proxy component built with
componentize-py (scripts/build-wasm-fixtures.sh bench-py). It answers every request with the
body all configurations of the benchmark answer, synchronously, through the wasi:http types
directly (no event loop: the smallest handler)."""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

BODY = b'{"message":"Hello, bench!","runtime":"wasm"}'


class IncomingHandler(exports.IncomingHandler):
    """The `wasi:http/incoming-handler` export."""

    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        stream = body.write()
        try:
            stream.blocking_write_and_flush(BODY)
        finally:
            # The stream is a child of the body: drop it first (wasmtime traps otherwise).
            stream.__exit__(None, None, None)
        OutgoingBody.finish(body, None)
