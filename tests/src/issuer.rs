//! An in-process OAuth token endpoint on loopback. It verifies the JWT-SVID
//! it is given against the dev Workload API's key, records every form it
//! receives, and can be told to misbehave per requested audience.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lanyard_supervisor::dev::DevWorkloadApi;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How the issuer answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A fresh token `tok-<audience>-<n>`.
    Ok,
    /// After a delay, a fresh token.
    SlowOk(Duration),
    /// This status and body, verbatim.
    Reply(u16, String),
    /// Never answers.
    Hang,
    /// Closes the connection without answering.
    Reset,
}

/// One received form.
pub type Form = Vec<(String, String)>;

struct State {
    api: Arc<DevWorkloadApi>,
    url: String,
    forms: Mutex<Vec<Form>>,
    modes: Mutex<HashMap<String, Mode>>,
    default_mode: Mutex<Mode>,
    minted: AtomicUsize,
    attempts: AtomicUsize,
    expires_in: AtomicU64,
    notify: Notify,
}

/// A running issuer.
#[derive(Clone)]
pub struct Issuer {
    /// `http://127.0.0.1:PORT/token`.
    pub url: String,
    state: Arc<State>,
}

impl Issuer {
    /// Starts on 127.0.0.1:0; SVIDs must verify against `api` with the token URL as audience.
    pub async fn start(api: Arc<DevWorkloadApi>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind issuer");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let url = format!("http://{addr}/token");
        let state = Arc::new(State {
            api,
            url: url.clone(),
            forms: Mutex::new(Vec::new()),
            modes: Mutex::new(HashMap::new()),
            default_mode: Mutex::new(Mode::Ok),
            minted: AtomicUsize::new(0),
            attempts: AtomicUsize::new(0),
            expires_in: AtomicU64::new(300),
            notify: Notify::new(),
        });
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move {
                            // An error from the service makes hyper drop the
                            // connection without a response.
                            handle(&s, req).await.ok_or_else(|| {
                                std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { url, state }
    }

    /// Answer requests for `audience` (or with no audience: `-`) this way.
    pub fn set_mode(&self, audience: &str, mode: Mode) {
        self.state
            .modes
            .lock()
            .unwrap()
            .insert(audience.to_owned(), mode);
    }

    /// Answer requests without a specific mode this way.
    pub fn set_default(&self, mode: Mode) {
        *self.state.default_mode.lock().unwrap() = mode;
    }

    /// `expires_in` for tokens minted from now on.
    pub fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Tokens minted.
    pub fn minted(&self) -> usize {
        self.state.minted.load(Ordering::SeqCst)
    }

    /// Requests received (successful or not).
    pub fn attempts(&self) -> usize {
        self.state.attempts.load(Ordering::SeqCst)
    }

    /// Every form received, in order.
    pub fn forms(&self) -> Vec<Form> {
        self.state.forms.lock().unwrap().clone()
    }

    /// A future that completes after the next answer; create it before
    /// triggering the request so no notification is missed.
    pub fn next_answer(&self) -> tokio::sync::futures::Notified<'_> {
        self.state.notify.notified()
    }
}

fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(s: &State, req: Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form: Form = form_urlencoded::parse(&body).into_owned().collect();
    s.attempts.fetch_add(1, Ordering::SeqCst);
    s.forms.lock().unwrap().push(form.clone());
    let audience = field(&form, "audience").unwrap_or("-").to_owned();
    let mode = s
        .modes
        .lock()
        .unwrap()
        .get(&audience)
        .cloned()
        .unwrap_or_else(|| s.default_mode.lock().unwrap().clone());
    let resp = match mode {
        Mode::Reset => None,
        mode => Some(answer(s, &form, &audience, mode).await),
    };
    s.notify.notify_waiters();
    resp
}

async fn answer(s: &State, form: &Form, audience: &str, mode: Mode) -> Response<Full<Bytes>> {
    match mode {
        Mode::Reply(status, body) => return json(status, body),
        Mode::Hang => std::future::pending::<()>().await,
        Mode::SlowOk(d) => tokio::time::sleep(d).await,
        Mode::Ok | Mode::Reset => {}
    }
    let assertion = field(form, "client_assertion")
        .or_else(|| field(form, "subject_token"))
        .or_else(|| field(form, "assertion"));
    let Some(assertion) = assertion else {
        return json(
            400,
            r#"{"error":"invalid_request","error_description":"no assertion"}"#.into(),
        );
    };
    if let Err(e) = s.api.signer().verify(assertion, &s.url) {
        return json(
            400,
            format!(r#"{{"error":"invalid_client","error_description":"{e}"}}"#),
        );
    }
    let n = s.minted.fetch_add(1, Ordering::SeqCst) + 1;
    let exp = s.expires_in.load(Ordering::SeqCst);
    json(
        200,
        format!(
            r#"{{"access_token":"tok-{audience}-{n}","token_type":"Bearer","expires_in":{exp}}}"#
        ),
    )
}
