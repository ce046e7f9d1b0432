//! `leadpipe connect --secret-arn` on a freshly deployed stack, as the README's deploy section
//! runs it: the secret as the template creates it (a generated verify token, nothing else),
//! the app secret from `APP_SECRET`, the webhook behind a Function URL and ingest behind an
//! SQS mapping (the compiled binaries under Lambda Runtime APIs, each started at its first
//! invocation as Lambda does), moto for Secrets Manager, SQS and DynamoDB, the sandbox for
//! Meta. The test lead must arrive in DynamoDB through Meta's webhook and ingest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_e2e::{Function, binary, start};

use leadpipe_lambda_harness::events::{HttpEvent, HttpFront, sqs_event_from};
use leadpipe_lambda_harness::{moto_endpoint, unique_name};
use leadpipe_sandbox::accounts::{APP_ID, DEFAULT_USER_TOKEN};
use leadpipe_sandbox::server::demo_app_secret;
use leadpipe_sandbox::{Accounts, Dataset, DatasetSpec, Faults, Sandbox, TokenKind, UserToken};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(60);

/// A Lambda Function URL in front of the webhook function, started at the first request.
async fn function_url(env: Vec<(String, String)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let webhook: Arc<OnceCell<Function>> = Arc::new(OnceCell::new());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (webhook, env) = (webhook.clone(), env.clone());
            tokio::spawn(async move {
                let _ = serve_one(stream, &webhook, &env).await;
            });
        }
    });
    format!("http://{address}/")
}

/// One HTTP/1.1 request (Connection: close) turned into a Function URL event.
async fn serve_one(
    mut stream: tokio::net::TcpStream,
    webhook: &OnceCell<Function>,
    env: &[(String, String)],
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, content_length) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + content_length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let body = buf[head_end..].to_vec();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_owned();
    let target = parts.next().unwrap_or("/").to_owned();
    let query_text = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let query: Vec<(String, String)> = url::form_urlencoded::parse(query_text.as_bytes())
        .into_owned()
        .collect();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .filter(|(k, _)| k == "x-hub-signature-256")
        .collect();
    let query_refs: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let event = HttpEvent {
        front: HttpFront::FunctionUrl,
        method: &method,
        query: &query_refs,
        headers: &header_refs,
        body: &body,
        base64: true,
    }
    .to_json();
    let function = webhook.get_or_init(|| start("leadpipe-webhook", env)).await;
    let answer = function
        .api
        .invoke(&event, Duration::from_secs(10), WAIT)
        .await
        .unwrap()
        .json()
        .unwrap();
    let status = answer["statusCode"].as_u64().unwrap_or(500);
    let text = answer["body"].as_str().unwrap_or_default().to_owned();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run scripts/test"]
async fn connect_on_a_fresh_stack_sees_its_test_lead_in_dynamodb() {
    let _moto = moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let secrets = aws_sdk_secretsmanager::Client::new(&config);

    let data = Dataset::generate(&DatasetSpec {
        pages: 2,
        forms_per_page: 1,
        leads: 6,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();
    sandbox.set_accounts(Accounts {
        users: vec![UserToken::new(DEFAULT_USER_TOKEN, TokenKind::ShortLived)],
        subscribed_pages: Some(BTreeSet::new()),
        ..Accounts::default()
    });

    let queue_url = sqs
        .create_queue()
        .queue_name(unique_name("connect-queue"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_url = sqs
        .create_queue()
        .queue_name(unique_name("connect-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let leads_table = unique_name("connect-leads");
    leadpipe_aws::dynamo::create_leads_table(&ddb, &leads_table)
        .await
        .unwrap();
    let state_table = unique_name("connect-state");
    leadpipe_aws::dynamo::create_state_table(&ddb, &state_table)
        .await
        .unwrap();
    // The secret as the template's GenerateSecretString leaves it after `sam deploy`.
    let generated_verify = "Gx7q2PLk9WmZ4c8RtY1b3NvH6sJdQ0aEfU5oKiVz";
    let secret_arn = secrets
        .create_secret()
        .name(unique_name("connect-secret"))
        .secret_string(
            serde_json::json!({"app_secret": "", "access_token": "", "page_tokens": {}, "verify_token": generated_verify})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();

    let mut env = leadpipe_lambda_harness::aws_env();
    env.extend(
        [
            ("SECRET_ARN", secret_arn.clone()),
            ("QUEUE_URL", queue_url.clone()),
            ("DLQ_URL", dlq_url.clone()),
            ("LEADS_TABLE", leads_table.clone()),
            ("STATE_TABLE", state_table.clone()),
            ("GRAPH_API_BASE", sandbox.base_url()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let callback = function_url(env.clone()).await;

    // The event source mapping: ingest starts with the first message.
    let poller = {
        let (sqs, queue_url, env) = (sqs.clone(), queue_url.clone(), env.clone());
        tokio::spawn(async move {
            let mut ingest: Option<Function> = None;
            loop {
                let got = sqs
                    .receive_message()
                    .queue_url(&queue_url)
                    .max_number_of_messages(10)
                    .visibility_timeout(10)
                    .send()
                    .await
                    .unwrap();
                let records: Vec<(String, String, String)> = got
                    .messages()
                    .iter()
                    .map(|m| {
                        (
                            m.message_id().unwrap().to_owned(),
                            m.receipt_handle().unwrap().to_owned(),
                            m.body().unwrap().to_owned(),
                        )
                    })
                    .collect();
                if records.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                if ingest.is_none() {
                    ingest = Some(start("leadpipe-ingest", &env).await);
                }
                let Some(function) = &ingest else { continue };
                let answer = function
                    .api
                    .invoke(&sqs_event_from(&records), Duration::from_secs(60), WAIT)
                    .await
                    .unwrap()
                    .json()
                    .unwrap();
                let failed: BTreeSet<String> = answer["batchItemFailures"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                for (_, handle, _) in records.iter().filter(|(id, _, _)| !failed.contains(id)) {
                    let _ = sqs
                        .delete_message()
                        .queue_url(&queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await;
                }
            }
        })
    };

    let out = tokio::process::Command::new(binary("leadpipe"))
        .args([
            "connect",
            "--app-id",
            APP_ID,
            "--secret-arn",
            &secret_arn,
            "--callback-url",
            &callback,
            "--test-lead",
            "--leads-table",
            &leads_table,
            "--wait-seconds",
            "120",
        ])
        .env("LEADPIPE_USER_TOKEN", DEFAULT_USER_TOKEN)
        .env("APP_SECRET", demo_app_secret())
        .env("GRAPH_API_BASE", sandbox.base_url())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("answered Meta's challenge"), "{text}");
    let lead_id = text
        .lines()
        .find(|l| l.contains("stored: in the store"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_else(|| panic!("{text}"))
        .to_owned();

    // The secret: merged into what the template made.
    let secret: serde_json::Value = serde_json::from_str(
        secrets
            .get_secret_value()
            .secret_id(&secret_arn)
            .send()
            .await
            .unwrap()
            .secret_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        secret["verify_token"], generated_verify,
        "the generated verify token is kept"
    );
    assert_eq!(
        secret["app_secret"],
        demo_app_secret(),
        "set from APP_SECRET"
    );
    assert!(
        secret["access_token"]
            .as_str()
            .unwrap()
            .starts_with("sandbox-long-lived-")
    );
    assert_eq!(secret["lookup_key"].as_str().unwrap().len(), 64);
    for (page, token) in &data.pages {
        assert_eq!(secret["page_tokens"][page], token.as_str());
    }

    // The test lead, in DynamoDB through the webhook, once; and gone at Meta.
    let item = ddb
        .get_item()
        .table_name(&leads_table)
        .key(
            "lead_id",
            aws_sdk_dynamodb::types::AttributeValue::S(lead_id.clone()),
        )
        .send()
        .await
        .unwrap()
        .item
        .unwrap_or_else(|| panic!("lead {lead_id} is not in the table"));
    assert_eq!(
        item.get("source")
            .and_then(|v| v.as_s().ok())
            .map(String::as_str),
        Some("webhook")
    );
    assert!(sandbox.test_leads().is_empty());
    assert_eq!(sandbox.subscribed_pages().len(), 2);
    for secret in [
        DEFAULT_USER_TOKEN,
        demo_app_secret(),
        generated_verify,
        "sandbox-long-lived-1",
    ]
    .into_iter()
    .chain(data.pages.iter().map(|(_, t)| t.as_str()))
    {
        assert!(!text.contains(secret), "a secret is printed:\n{text}");
    }

    // ---- a page's token dies while leads arrive; `connect --stack` heals it (#25) ----------
    // The stack's outputs, as the template names them.
    let stack = unique_name("connect-stack");
    let template = serde_json::json!({
        "Resources": {"Marker": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "LeadsTableName": {"Value": leads_table}, "StateTableName": {"Value": state_table},
            "LeadEventsQueueUrl": {"Value": queue_url}, "DeadLetterQueueUrl": {"Value": dlq_url},
            "AppSecretArn": {"Value": secret_arn}
        }
    });
    aws_sdk_cloudformation::Client::new(&config)
        .create_stack()
        .stack_name(&stack)
        .template_body(template.to_string())
        .send()
        .await
        .unwrap();
    let dying = data.pages[1].0.clone();
    assert!(sandbox.invalidate_page_token(&dying, 460).is_some());
    let sender = leadpipe_sandbox::WebhookSender {
        url: callback.clone(),
        app_secret: demo_app_secret().to_owned(),
        drop_rate: 0.0,
        duplicate_rate: 0.0,
        changes_per_post: 1,
        seed: 25,
        rate: None,
    };
    let sent = sender.send(&data.leads, |_| {}).await;
    assert!(sent.dropped.is_empty());
    let waiting = data.leads.iter().filter(|l| l.page_id == dying).count();
    let stored = |ids: Vec<String>| {
        let ddb = ddb.clone();
        let table = leads_table.clone();
        async move {
            let mut n = 0;
            for id in ids {
                let got = ddb
                    .get_item()
                    .table_name(&table)
                    .key("lead_id", aws_sdk_dynamodb::types::AttributeValue::S(id))
                    .send()
                    .await
                    .unwrap();
                n += usize::from(got.item.is_some());
            }
            n
        }
    };
    let dead_letters = || {
        let (sqs, dlq) = (sqs.clone(), dlq_url.clone());
        async move {
            let attrs = sqs
                .get_queue_attributes()
                .queue_url(&dlq)
                .attribute_names(
                    aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages,
                )
                .send()
                .await
                .unwrap();
            attrs
                .attributes()
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                })
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        }
    };
    let ids = |page: Option<&str>| -> Vec<String> {
        data.leads
            .iter()
            .filter(|l| page.is_none_or(|p| l.page_id == p))
            .map(|l| l.id.clone())
            .collect()
    };
    let others: Vec<String> = data
        .leads
        .iter()
        .filter(|l| l.page_id != dying)
        .map(|l| l.id.clone())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (kept, dead) = (stored(others.clone()).await, dead_letters().await);
        if kept == others.len() && dead == waiting {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kept} of the other page's leads stored, {dead} of {waiting} dead letters"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        stored(ids(Some(&dying))).await,
        0,
        "the dead page's leads wait"
    );

    // A new token through connect, the pipeline named by its stack: the secret gets the
    // page's new token, the waiting leads go back to the queue, and the warm ingest
    // container reads the new version at once (no restart).
    let healed = tokio::process::Command::new(binary("leadpipe"))
        .args([
            "connect",
            "--app-id",
            APP_ID,
            "--secret-arn",
            &secret_arn,
            "--page",
            &dying,
            "--stack",
            &stack,
        ])
        .env("LEADPIPE_USER_TOKEN", DEFAULT_USER_TOKEN)
        .env("GRAPH_API_BASE", sandbox.base_url())
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&healed.stdout),
        String::from_utf8_lossy(&healed.stderr)
    );
    assert!(
        said.contains(&format!("brought back {waiting} lead(s)")),
        "{said}"
    );
    let all = ids(None);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let n = stored(all.clone()).await;
        if n == all.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of {} leads stored after connect",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dead_letters().await, 0, "nothing left waiting");
    poller.abort();
    for (_, token) in &data.pages {
        assert!(
            !said.contains(token.as_str()),
            "a token is printed:\n{said}"
        );
    }
}
