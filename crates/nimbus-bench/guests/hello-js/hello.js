// The JavaScript hello of `nimbus-bench all`: a wasi:http/proxy component built with
// componentize-js (scripts/build-wasm-fixtures.sh bench-js). It answers every request with
// the body all configurations of the benchmark answer, through the wasi:http types directly
// (the smallest handler: no Request/Response objects, no fetch event; see
// examples/wasm-edge-js/src/workers.js for why the export is hand-written).

import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.10';

const BODY = new TextEncoder().encode('{"message":"Hello, bench!","runtime":"wasm"}');
const JSON_TYPE = new TextEncoder().encode('application/json');

export const incomingHandler = {
  handle(_request, responseOut) {
    const response = new OutgoingResponse(Fields.fromList([['content-type', JSON_TYPE]]));
    response.setStatusCode(200);
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = body.write();
    try {
      stream.blockingWriteAndFlush(BODY);
    } finally {
      stream[Symbol.dispose]();
    }
    OutgoingBody.finish(body, undefined);
  },
};
