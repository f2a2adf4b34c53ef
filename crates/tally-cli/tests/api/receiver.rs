//! A real local webhook receiver for the tests: plain HTTP or HTTPS (a CA and a certificate
//! for `localhost` made on the fly), answering each POST with the next scripted status (200
//! once the script is used up) and keeping every request it saw.
#![allow(clippy::unwrap_used)] // a test fixture: a failure to start is a failed test

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request the receiver saw.
#[derive(Clone, Debug)]
pub struct Hit {
    /// Its headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: String,
}

impl Hit {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Shared {
    hits: Mutex<Vec<Hit>>,
    script: Mutex<VecDeque<u16>>,
}

/// A running receiver; it stops when dropped.
pub struct Receiver {
    /// Where to post: `http://127.0.0.1:PORT/hook` or `https://localhost:PORT/hook`.
    pub url: String,
    /// The CA that signed an https receiver's certificate, in PEM.
    pub ca_pem: Option<String>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = req.into_body().collect().await?.to_bytes();
    shared.hits.lock().unwrap().push(Hit { headers, body: String::from_utf8_lossy(&body).into_owned() });
    let status = shared.script.lock().unwrap().pop_front().unwrap_or(200);
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    Ok(resp)
}

impl Receiver {
    /// A plain HTTP receiver on a free port.
    pub async fn start() -> Receiver {
        Receiver::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), false).await
    }

    /// An HTTPS receiver on a free port, with a certificate for `localhost` signed by a CA
    /// made for it (`ca_pem`).
    pub async fn start_tls() -> Receiver {
        Receiver::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), true).await
    }

    /// A plain HTTP receiver on `listener` (a port chosen beforehand).
    pub async fn start_on(listener: TcpListener, tls: bool) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let (acceptor, ca_pem) = if tls {
            let (acceptor, ca) = tls_acceptor();
            (Some(acceptor), Some(ca))
        } else {
            (None, None)
        };
        let served = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = served.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(shared.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            if let Ok(stream) = a.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        let url = if tls {
            format!("https://localhost:{port}/hook")
        } else {
            format!("http://127.0.0.1:{port}/hook")
        };
        Receiver { url, ca_pem, shared, task }
    }

    /// Answers the next requests with these statuses, in order (then 200 again).
    pub fn answer_next(&self, statuses: &[u16]) {
        self.shared.script.lock().unwrap().extend(statuses.iter().copied());
    }

    /// Forgets the statuses not used yet: 200 from now on.
    pub fn clear_script(&self) {
        self.shared.script.lock().unwrap().clear();
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests came (at most `within`), then returns them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= n || tokio::time::Instant::now() >= deadline {
                assert!(
                    hits.len() >= n,
                    "waited {within:?} for {n} deliveries, got {}: {hits:?}",
                    hits.len()
                );
                return hits;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca_cert.pem())
}
