use lambda_runtime::{run, service_fn};
use leadpipe_deliver::DeliverApp;

// One thread: a Lambda at 256 MB has a fraction of one vCPU, and a multi-thread runtime
// spends it handing each request between threads (BENCHMARKS.md, "What was cut, measured A/B").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    leadpipe_telemetry::init();
    let app = DeliverApp::from_env().await.inspect_err(|err| {
        tracing::error!(error = %err, "leadpipe-deliver cannot start");
    })?;
    let app = &app;
    run(service_fn(move |event| app.handle(event))).await
}
