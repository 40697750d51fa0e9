// A wasi:http handler in JavaScript, built into a component by
// ComponentizeJS (see scripts/build-components.sh): GET / answers
// a greeting, POST /echo streams the request body back.
import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from "wasi:http/types@0.2.12";

function respond(responseOut, status, text) {
  const response = new OutgoingResponse(
    Fields.fromList([["content-type", new TextEncoder().encode("text/plain")]]),
  );
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: "ok", val: response });
  const stream = body.write();
  const bytes = new TextEncoder().encode(text);
  for (let i = 0; i < bytes.length; i += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(i, i + 4096));
  }
  stream[Symbol.dispose]();
  OutgoingBody.finish(body, undefined);
}

function echo(request, responseOut) {
  const incoming = request.consume();
  const source = incoming.stream();
  const response = new OutgoingResponse(
    Fields.fromList([
      ["content-type", new TextEncoder().encode("application/octet-stream")],
    ]),
  );
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: "ok", val: response });
  const sink = body.write();
  for (;;) {
    let chunk;
    try {
      chunk = source.blockingRead(65536n);
    } catch (e) {
      if (e.payload && e.payload.tag === "closed") break;
      throw e;
    }
    for (let i = 0; i < chunk.length; i += 4096) {
      sink.blockingWriteAndFlush(chunk.subarray(i, i + 4096));
    }
  }
  source[Symbol.dispose]();
  sink[Symbol.dispose]();
  OutgoingBody.finish(body, undefined);
}

export const incomingHandler = {
  handle(request, responseOut) {
    const method = request.method();
    const path = request.pathWithQuery() || "/";
    if (method.tag === "get" && path === "/") {
      respond(responseOut, 200, "hello from a JavaScript wasi:http component\n");
    } else if (method.tag === "post" && path === "/echo") {
      echo(request, responseOut);
    } else {
      respond(responseOut, 404, "not found\n");
    }
  },
};
