//! Nubo's example function: greets whoever the request body names.

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

wasip2::http::proxy::export!(Hello);

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let body = request.consume().unwrap();
    let mut data = Vec::new();
    {
        let stream = body.stream().unwrap();
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            data.extend_from_slice(&chunk);
        }
    }
    IncomingBody::finish(body);
    data
}

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let body = read_body(&request);
        let name = String::from_utf8_lossy(&body).trim().to_string();
        let name = if name.is_empty() { "world".to_string() } else { name };
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
        println!("greeting {name}");

        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())]).unwrap();
        let response = OutgoingResponse::new(headers);
        let outgoing = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let stream = outgoing.write().unwrap();
        stream.blocking_write_and_flush(format!("{greeting}, {name}!\n").as_bytes()).unwrap();
        drop(stream);
        OutgoingBody::finish(outgoing, None).unwrap();
    }
}
