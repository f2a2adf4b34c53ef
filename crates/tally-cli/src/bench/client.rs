//! A minimal HTTP/1.1 keep-alive client on hyper's connection API: one TCP connection, one
//! request in flight, driven inside the task that sends (no second task per connection, so no
//! cross-task wake-up per request).

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::options::Target;

/// How long one request may take before its connection is dropped and the request counts as
/// unanswered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before reconnecting after a failure.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// The server's resolved address and the headers every request carries.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub auth: HeaderValue,
    pub base_path: String,
}

impl Endpoint {
    /// Resolves the target's host once.
    pub async fn resolve(target: &Target, admin_key: &str) -> anyhow::Result<Endpoint> {
        let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .with_context(|| format!("resolving {}", target.host))?
            .next()
            .with_context(|| format!("{} resolves to no address", target.host))?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {admin_key}"))
            .context("--admin-key holds characters not allowed in a header")?;
        auth.set_sensitive(true);
        Ok(Endpoint {
            addr,
            host: HeaderValue::from_str(&target.authority).context("--url: bad host")?,
            auth,
            base_path: target.base_path.clone(),
        })
    }

    /// The URI (origin-form) of an API path such as `/v1/plans/x`.
    pub fn uri(&self, path: &str) -> anyhow::Result<Uri> {
        format!("{}{path}", self.base_path).parse().with_context(|| format!("bad request path {path:?}"))
    }

    /// A request with the Host and Authorization headers, and a JSON content type when it has a
    /// body.
    pub fn request(&self, method: Method, uri: Uri, body: Bytes) -> Request<Full<Bytes>> {
        let has_body = !body.is_empty();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        headers.reserve(3);
        headers.insert(HOST, self.host.clone());
        headers.insert(AUTHORIZATION, self.auth.clone());
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        req
    }

    /// Opens a keep-alive connection.
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .with_context(|| format!("connecting to {}: timed out", self.addr))?
            .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await.context("HTTP/1.1 handshake")?;
        Ok(Conn { sender, driver: Box::pin(driver), closed: false })
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub struct SendError {
    /// Whether the request may have reached the server (and so may have been applied).
    pub maybe_sent: bool,
    pub message: String,
}

/// One connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    closed: bool,
}

impl Conn {
    /// Whether the connection ended (by the server, or an error); it must not be used again.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends a request and reads the whole answer, polling the connection in the same task.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), SendError> {
        if self.closed {
            return Err(SendError { maybe_sent: false, message: "connection closed".to_owned() });
        }
        let Conn { sender, driver, closed } = self;
        let exchange = async {
            sender.ready().await.map_err(|e| SendError {
                maybe_sent: false,
                message: format!("connection not ready: {e}"),
            })?;
            let answer = async {
                let resp = sender.send_request(req).await?;
                let (parts, body) = resp.into_parts();
                Ok::<_, hyper::Error>((parts.status, body.collect().await?.to_bytes()))
            };
            answer.await.map_err(|e| SendError { maybe_sent: !e.is_canceled(), message: e.to_string() })
        };
        let mut exchange = std::pin::pin!(exchange);
        tokio::select! {
            biased;
            answer = &mut exchange => return answer,
            _ = driver.as_mut() => *closed = true,
        }
        // The connection ended: the answer is complete if it was read before, else an error.
        exchange.await
    }
}
