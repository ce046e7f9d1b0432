//! A Lambda Runtime API on loopback, enough of AWS's to run a compiled function binary
//! (`bootstrap`) as Lambda does: the binary polls `/invocation/next`, answers on
//! `/invocation/{id}/response` or `/error`, and reports start-up failures on `/init/error`.
//!
//! Tests use it to drive the real binaries; the start-up benchmark uses [`RuntimeApi::first_poll`]
//! to time a cold start (process start to the first poll, which is when the handler is ready).

#![warn(missing_docs)]
pub mod events;

pub mod moto;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use moto::Moto;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc, oneshot};

/// What a function answered to one invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The bytes the function posted to `/response`.
    Response(Vec<u8>),
    /// The JSON the function posted to `/error`.
    Error(serde_json::Value),
}

impl Outcome {
    /// The response as JSON, or why it is not one.
    pub fn json(&self) -> Result<serde_json::Value, HarnessError> {
        match self {
            Outcome::Response(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| HarnessError::Protocol(format!("response is not JSON: {e}"))),
            Outcome::Error(err) => Err(HarnessError::FunctionError(err.to_string())),
        }
    }
}

/// Why the harness could not run or hear from a function.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A socket or process could not be set up.
    #[error("runtime API could not start: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("the function did not answer within {0:?}")]
    TimedOut(Duration),
    /// The function posted an error.
    #[error("the function reported an error: {0}")]
    FunctionError(String),
    /// Something did not follow the Runtime API.
    #[error("runtime API protocol: {0}")]
    Protocol(String),
}

struct PendingInvocation {
    request_id: String,
    payload: Vec<u8>,
    deadline_ms: u64,
}

struct Shared {
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<PendingInvocation>>,
    waiters: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    first_poll: Mutex<Option<Instant>>,
    polled: Notify,
    init_error: Mutex<Option<serde_json::Value>>,
    function_arn: String,
}

/// A Runtime API server on `127.0.0.1`, stopped when dropped.
pub struct RuntimeApi {
    address: SocketAddr,
    shared: Arc<Shared>,
    sender: mpsc::UnboundedSender<PendingInvocation>,
    next_id: AtomicU64,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl RuntimeApi {
    /// Starts the server on a free loopback port.
    pub async fn start(function_name: &str) -> Result<Self, HarnessError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: tokio::sync::Mutex::new(receiver),
            waiters: Mutex::new(HashMap::new()),
            first_poll: Mutex::new(None),
            polled: Notify::new(),
            init_error: Mutex::new(None),
            function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{function_name}"),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            address,
            shared,
            sender,
            next_id: AtomicU64::new(1),
            server,
        })
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The environment Lambda gives a function, pointing it at this server.
    pub fn lambda_env(&self, function_name: &str) -> Vec<(String, String)> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.address.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", function_name.to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".to_owned()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function_name}"),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2026/11/29/[$LATEST]test".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Starts `binary` as Lambda would, with `envs` added to [`RuntimeApi::lambda_env`].
    /// Its stdout and stderr lines are collected in [`FunctionProcess::logs`].
    pub fn spawn_function(
        &self,
        binary: &FsPath,
        function_name: &str,
        envs: &[(String, String)],
    ) -> Result<FunctionProcess, HarnessError> {
        let mut command = Command::new(binary);
        command
            .envs(self.lambda_env(function_name))
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command.spawn()?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            collect_lines(stdout, logs.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            collect_lines(stderr, logs.clone());
        }
        Ok(FunctionProcess {
            child,
            logs,
            started,
        })
    }

    /// When the function first asked for work, waiting up to `timeout` for it.
    pub async fn first_poll(&self, timeout: Duration) -> Result<Instant, HarnessError> {
        let wait = async {
            loop {
                let notified = self.shared.polled.notified();
                if let Some(at) = *lock(&self.shared.first_poll) {
                    return at;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            match lock(&self.shared.init_error).clone() {
                Some(err) => HarnessError::FunctionError(format!("init failed: {err}")),
                None => HarnessError::TimedOut(timeout),
            }
        })
    }

    /// The error the function posted to `/init/error`, if any.
    pub fn init_error(&self) -> Option<serde_json::Value> {
        lock(&self.shared.init_error).clone()
    }

    /// Invokes the function with `event` and waits for its answer. `deadline` is what the
    /// function sees as its remaining time; `timeout` bounds the wait here.
    pub async fn invoke(
        &self,
        event: &serde_json::Value,
        deadline: Duration,
        timeout: Duration,
    ) -> Result<Outcome, HarnessError> {
        let payload = serde_json::to_vec(event)
            .map_err(|e| HarnessError::Protocol(format!("event is not serializable: {e}")))?;
        self.invoke_raw(payload, deadline, timeout).await
    }

    /// Like [`RuntimeApi::invoke`] with the payload's bytes as given.
    pub async fn invoke_raw(
        &self,
        payload: Vec<u8>,
        deadline: Duration,
        timeout: Duration,
    ) -> Result<Outcome, HarnessError> {
        let request_id = format!(
            "00000000-0000-4000-8000-{:012}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.waiters).insert(request_id.clone(), tx);
        let deadline_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(deadline)
            .as_millis() as u64;
        self.sender
            .send(PendingInvocation {
                request_id,
                payload,
                deadline_ms,
            })
            .map_err(|_| HarnessError::Protocol("runtime API stopped".into()))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(HarnessError::Protocol("invocation dropped".into())),
            Err(_) => Err(HarnessError::TimedOut(timeout)),
        }
    }
}

/// A function binary running under a [`RuntimeApi`]; killed when dropped.
pub struct FunctionProcess {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl FunctionProcess {
    /// When the process was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Every line the process has written to stdout and stderr so far.
    pub fn logs(&self) -> Vec<String> {
        lock(&self.logs).clone()
    }

    /// The process id, for signals.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process and waits for it.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }
}

fn collect_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: R,
    logs: Arc<Mutex<Vec<String>>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            lock(&logs).push(line);
        }
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks is a test failure already; carry on.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    {
        let mut first = lock(&shared.first_poll);
        if first.is_none() {
            *first = Some(Instant::now());
        }
    }
    shared.polled.notify_waiters();
    let pending = shared.queue.lock().await.recv().await;
    let Some(pending) = pending else {
        return StatusCode::GONE.into_response();
    };
    let mut headers = HeaderMap::new();
    let pairs = [
        ("lambda-runtime-aws-request-id", pending.request_id.clone()),
        (
            "lambda-runtime-deadline-ms",
            pending.deadline_ms.to_string(),
        ),
        (
            "lambda-runtime-invoked-function-arn",
            shared.function_arn.clone(),
        ),
        (
            "lambda-runtime-trace-id",
            "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1".to_owned(),
        ),
        ("content-type", "application/json".to_owned()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, pending.payload).into_response()
}

async fn respond(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    deliver(&shared, &id, Outcome::Response(body.to_vec()))
}

async fn fail(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let error = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    deliver(&shared, &id, Outcome::Error(error))
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let error = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    *lock(&shared.init_error) = Some(error);
    shared.polled.notify_waiters();
    StatusCode::ACCEPTED
}

fn deliver(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    match lock(&shared.waiters).remove(id) {
        Some(waiter) => {
            let _ = waiter.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

/// The moto endpoint the test command started, refusing anything that is not loopback so
/// that an ignored test run by hand can never reach a real AWS account.
pub fn moto_endpoint() -> Result<String, HarnessError> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").map_err(|_| {
        HarnessError::Protocol(
            "AWS_ENDPOINT_URL is not set: run these tests through scripts/test, which starts moto"
                .into(),
        )
    })?;
    if std::env::var("LEADPIPE_MOTO").as_deref() != Ok("1")
        || !(endpoint.starts_with("http://127.0.0.1:") || endpoint.starts_with("http://localhost:"))
    {
        return Err(HarnessError::Protocol(format!(
            "refusing to run against {endpoint}: these tests need scripts/test's loopback moto"
        )));
    }
    Ok(endpoint)
}

/// A name no other test in this run uses, for queues and tables.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The AWS SDK settings of this process (moto's endpoint, region, test credentials), to hand
/// to a function binary spawned under a [`RuntimeApi`].
pub fn aws_env() -> Vec<(String, String)> {
    [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
    .collect()
}

/// What a [`TcpProxy`] saw, and its switch.
#[derive(Debug, Default)]
pub struct ProxyState {
    /// While true, new connections are accepted and dropped at once, as an unreachable
    /// endpoint behaves.
    pub down: std::sync::atomic::AtomicBool,
    active: AtomicU64,
    /// The most connections open at once so far.
    pub max_active: AtomicU64,
    /// The AWS API calls seen (`sqs:SendMessageBatch`, `dynamodb:PutItem`, ...), read from
    /// the `X-Amz-Target` header every JSON-protocol request carries.
    calls: Mutex<std::collections::BTreeSet<String>>,
}

impl ProxyState {
    /// The AWS API calls seen so far, as `service:Action`.
    pub fn aws_calls(&self) -> std::collections::BTreeSet<String> {
        lock(&self.calls).clone()
    }

    fn record(&self, header_line: &[u8]) {
        const NAME: &[u8] = b"x-amz-target:";
        if header_line.len() <= NAME.len() || !header_line[..NAME.len()].eq_ignore_ascii_case(NAME)
        {
            return;
        }
        let value = String::from_utf8_lossy(&header_line[NAME.len()..]);
        let Some((prefix, action)) = value.trim().split_once('.') else {
            return;
        };
        let service = match prefix {
            "AmazonSQS" => "sqs",
            // DynamoDB_20120810 and DynamoDBStreams_20120810 alike.
            p if p.starts_with("DynamoDB") => "dynamodb",
            "secretsmanager" => "secretsmanager",
            "AWSEvents" => "events",
            other => other,
        };
        lock(&self.calls).insert(format!("{service}:{action}"));
    }
}

/// Copies client bytes to the server, handing each header-sized line to `state.record`.
async fn copy_recording(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<ProxyState>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MAX_LINE: usize = 512;
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut overlong = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &buf[..n] {
            if byte == b'\n' {
                if !overlong {
                    state.record(line.strip_suffix(b"\r").unwrap_or(&line));
                }
                line.clear();
                overlong = false;
            } else if line.len() < MAX_LINE {
                line.push(byte);
            } else {
                overlong = true;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl ProxyState {
    /// The most connections that were open at the same time.
    pub fn max_active(&self) -> u64 {
        self.max_active.load(Ordering::SeqCst)
    }
}

/// A TCP proxy on loopback in front of `upstream` (`host:port`): for faults (an endpoint
/// that goes away) and for counting how many connections a client opens at once.
pub struct TcpProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// What it saw, and its switch.
    pub state: Arc<ProxyState>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: String) -> Result<Self, HarnessError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(HarnessError::Io)?;
        let address = listener.local_addr().map_err(HarnessError::Io)?;
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if shared.down.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let now = shared.active.fetch_add(1, Ordering::SeqCst) + 1;
                shared.max_active.fetch_max(now, Ordering::SeqCst);
                let (upstream, shared) = (upstream.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let (in_read, mut in_write) = inbound.into_split();
                        let (mut out_read, out_write) = outbound.into_split();
                        let up = copy_recording(in_read, out_write, shared.clone());
                        // When the server ends its side, end the client's too, as
                        // copy_bidirectional does: a client must see the close, not hang.
                        let down = async {
                            use tokio::io::AsyncWriteExt;
                            let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
                            let _ = in_write.shutdown().await;
                        };
                        tokio::join!(up, down);
                    }
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            url: format!("http://{address}"),
            state,
        })
    }
}

/// Every message on a dead-letter queue as `(body, leadpipe_reason_class, leadpipe_reason)`.
/// Each is received once and left invisible for five minutes, so a test reads each once.
pub async fn dead_letters(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> Result<Vec<(String, String, String)>, HarnessError> {
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .visibility_timeout(300)
            .send()
            .await
            .map_err(|e| HarnessError::Protocol(format!("receive from the DLQ: {e}")))?;
        if got.messages().is_empty() {
            return Ok(out);
        }
        for m in got.messages() {
            let attr = |k: &str| {
                m.message_attributes()
                    .and_then(|a| a.get(k))
                    .and_then(|v| v.string_value())
                    .unwrap_or_default()
                    .to_owned()
            };
            out.push((
                m.body().unwrap_or_default().to_owned(),
                attr("leadpipe_reason_class"),
                attr("leadpipe_reason"),
            ));
        }
    }
}
