//! A wasi:http/proxy component: `GET /hello/NAME` answers a greeting as JSON.

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let name = path.split('?').next().unwrap_or_default().trim_start_matches("/hello").trim_matches('/');
        let name = if name.is_empty() { "world" } else { name };
        let body = format!("{{\"message\":\"Hello, {}!\",\"runtime\":\"wasm\"}}", name.replace(['"', '\\'], ""));

        let headers = Fields::from_list(&[("content-type".to_owned(), b"application/json".to_vec())])
            .unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(headers);
        let Ok(outgoing) = response.body() else { return };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = outgoing.write() {
            let _ = stream.blocking_write_and_flush(body.as_bytes());
        }
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

wasip2::http::proxy::export!(Hello);
