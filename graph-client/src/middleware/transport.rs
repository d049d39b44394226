//! The innermost service: reqwest, with bodies read within bounds.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::{GraphHttpRequest, GraphHttpResponse};
use crate::error::GraphError;

/// The most read of an error body, and of a success body.
pub(crate) const MAX_ERROR_BODY: usize = 1 << 20;
pub(crate) const MAX_BODY: usize = 64 << 20;

/// Sends a call with reqwest and reads its answer.
#[derive(Clone, Debug)]
pub(crate) struct Transport {
    pub(crate) http: reqwest::Client,
}

impl tower::Service<GraphHttpRequest> for Transport {
    type Response = GraphHttpResponse;
    type Error = GraphError;
    type Future = Pin<Box<dyn Future<Output = Result<GraphHttpResponse, GraphError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GraphError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GraphHttpRequest) -> Self::Future {
        let http = self.http.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut call = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers);
            if !body.is_empty() {
                call = call.body(body);
            }
            let response = call.send().await.map_err(GraphError::Transport)?;
            let status = response.status();
            let headers = response.headers().clone();
            let limit = if status.is_success() {
                MAX_BODY
            } else {
                MAX_ERROR_BODY
            };
            let body = match read_limited(response, limit).await {
                Ok(body) => body,
                // An error's body cut short still leaves its status and headers.
                Err(_) if !status.is_success() => Bytes::new(),
                Err(e) => return Err(e),
            };
            let mut answer = http::Response::new(body);
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            Ok(answer)
        })
    }
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Bytes, GraphError> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(GraphError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(GraphError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
