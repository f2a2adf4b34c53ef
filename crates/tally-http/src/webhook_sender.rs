//! Posts webhook deliveries over HTTP or HTTPS (rustls, with the system's roots and any extra
//! ones configured by `--webhook-ca-file`), following no redirect.

use std::time::Duration;

use tally_service::webhooks::{Attempt, Sender};

/// The `User-Agent` of every delivery.
pub const WEBHOOK_USER_AGENT: &str = concat!("Tally-Webhooks/", env!("CARGO_PKG_VERSION"));

/// The client the delivery worker posts with.
#[derive(Clone)]
pub struct HttpSender {
    client: reqwest::Client,
}

impl HttpSender {
    /// A sender trusting the system's roots and the certificates of `extra_roots_pem` (a PEM
    /// bundle), if given.
    pub fn new(extra_roots_pem: Option<&[u8]>) -> Result<HttpSender, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(WEBHOOK_USER_AGENT)
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(pem) = extra_roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("reading the webhook CA file: {e}"))?;
            if certs.is_empty() {
                return Err("the webhook CA file holds no PEM certificate".to_owned());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| format!("building the webhook HTTP client: {e}"))?;
        Ok(HttpSender { client })
    }
}

impl Sender for HttpSender {
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &str,
        timeout: Duration,
    ) -> Attempt {
        let mut request = self
            .client
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(answer) => Attempt::Answered(answer.status().as_u16()),
            Err(e) if e.is_timeout() => {
                Attempt::NoAnswer(format!("no answer within {} ms", timeout.as_millis()))
            }
            Err(e) => Attempt::NoAnswer(error_chain(&e)),
        }
    }
}

/// The error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
