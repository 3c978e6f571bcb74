//! The HTTP service the server runs. The relay endpoints with fixed paths
//! (chat completions, completions, embeddings, responses, Anthropic
//! messages), which carry nearly all of the traffic, are called directly;
//! every other request goes through the router. Both paths call the same
//! handler code; the direct one skips the router's matching and layers.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use futures_util::future::Either;
use http::Method;
use relay::Endpoint;
use tower_service::Service;

use crate::{AppState, openai_routes, router};

/// Makes one [`Connection`] per accepted connection; pass it to
/// `axum::serve`.
#[derive(Clone)]
pub struct MakeService {
    router: Router,
    state: AppState,
}

/// The service for one client connection.
#[derive(Clone)]
pub struct Connection {
    router: Router,
    state: AppState,
    peer: SocketAddr,
}

/// The server's service: [`router`] plus the direct relay paths.
pub fn service(state: AppState) -> MakeService {
    MakeService {
        router: router(state.clone()),
        state,
    }
}

/// The endpoint a fixed relay path is served by.
fn direct(path: &str) -> Option<Endpoint> {
    Some(match path {
        "/v1/chat/completions" => Endpoint::ChatCompletions,
        "/v1/completions" => Endpoint::Completions,
        "/v1/embeddings" => Endpoint::Embeddings,
        "/v1/responses" => Endpoint::Responses,
        "/v1/messages" => Endpoint::AnthropicMessages,
        _ => return None,
    })
}

impl<L> Service<IncomingStream<'_, L>> for MakeService
where
    L: Listener<Addr = SocketAddr>,
{
    type Response = Connection;
    type Error = Infallible;
    type Future = Ready<Result<Connection, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, L>) -> Self::Future {
        ready(Ok(Connection {
            router: self.router.clone(),
            state: self.state.clone(),
            peer: *stream.remote_addr(),
        }))
    }
}

type DirectFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<DirectFuture, <Router as Service<Request>>::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if req.method() == Method::POST
            && let Some(endpoint) = direct(req.uri().path())
        {
            let (state, peer) = (self.state.clone(), self.peer);
            return Either::Left(Box::pin(async move {
                Ok(openai_routes::relay_endpoint(state, endpoint, peer, req).await)
            }));
        }
        // what `into_make_service_with_connect_info` would have added
        req.extensions_mut().insert(ConnectInfo(self.peer));
        Either::Right(self.router.call(req))
    }
}
