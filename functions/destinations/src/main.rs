use lambda_runtime::{run, service_fn};
use leadpipe_destinations::DestinationsApp;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    leadpipe_telemetry::init();
    let app = DestinationsApp::from_env().await.inspect_err(|err| {
        tracing::error!(error = %err, "leadpipe-destinations cannot start");
    })?;
    let app = &app;
    run(service_fn(move |event| app.handle(event))).await
}
