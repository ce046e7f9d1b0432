use lambda_runtime::{run, service_fn};
use leadpipe_stages::StagesApp;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    leadpipe_telemetry::init();
    let app = StagesApp::from_env().await.inspect_err(|err| {
        tracing::error!(error = %err, "leadpipe-stages cannot start");
    })?;
    let app = &app;
    run(service_fn(move |event| app.handle(event))).await
}
