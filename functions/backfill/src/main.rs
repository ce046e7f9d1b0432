use lambda_runtime::{run, service_fn};
use leadpipe_backfill::BackfillApp;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    leadpipe_telemetry::init();
    let app = BackfillApp::from_env().await.inspect_err(|err| {
        tracing::error!(error = %err, "leadpipe-backfill cannot start");
    })?;
    let app = &app;
    run(service_fn(move |event| app.handle(event))).await
}
