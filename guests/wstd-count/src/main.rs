//! A `wstd` guest that counts the requests its instance served, to check that `wstd`'s
//! `#[http_server]` supports repeated `handle` calls on one instance (Nubo's `reuse`).

use std::sync::atomic::{AtomicU64, Ordering};
use wstd::http::body::Body;
use wstd::http::{Error, Request, Response};

static SERVED: AtomicU64 = AtomicU64::new(0);

#[wstd::http_server]
async fn main(_request: Request<Body>) -> Result<Response<Body>, Error> {
    let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    wstd::task::sleep(wstd::time::Duration::from_millis(1)).await;
    Ok(Response::new(format!("{served}\n").into()))
}
