use lambda_http::{run, service_fn};
use leadpipe_webhook::WebhookApp;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    leadpipe_telemetry::init();
    let app = WebhookApp::from_env().await.inspect_err(|err| {
        tracing::error!(error = %err, "leadpipe-webhook cannot start");
    })?;
    let app = &app;
    run(service_fn(move |request| app.handle(request))).await
}
