use lambda_runtime::{run, service_fn};
use leadpipe_deliver::DeliverApp;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    leadpipe_telemetry::init();
    let app = DeliverApp::from_env().await.inspect_err(|err| {
        tracing::error!(error = %err, "leadpipe-deliver cannot start");
    })?;
    let app = &app;
    run(service_fn(move |event| app.handle(event))).await
}
