//! AWS-shaped events for tests, built from the fixtures under `tests/fixtures/` (Function
//! URL as AWS documents it; API Gateway HTTP API, SQS and scheduled events as
//! `sam local generate-event` makes them).

use base64::Engine;
use serde_json::{Map, Value, json};

const FUNCTION_URL: &str = include_str!("../../../fixtures/function-url-request.json");
const HTTP_API: &str = include_str!("../../../fixtures/apigw-http-api-proxy.json");
const SQS: &str = include_str!("../../../fixtures/sqs-receive-message.json");
const SCHEDULED: &str = include_str!("../../../fixtures/cloudwatch-scheduled-event.json");

/// Which front door an HTTP event came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFront {
    /// A Lambda Function URL (payload format 2.0).
    FunctionUrl,
    /// An API Gateway HTTP API.
    HttpApi,
}

/// An HTTP request as Lambda delivers it (payload format 2.0).
#[derive(Debug, Clone, Copy)]
pub struct HttpEvent<'a> {
    /// Which front sends it.
    pub front: HttpFront,
    /// The HTTP method.
    pub method: &'a str,
    /// Query parameters, in order.
    pub query: &'a [(&'a str, &'a str)],
    /// Headers.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body, sent base64-encoded when asked.
    pub body: &'a [u8],
    /// Send the body base64-encoded, as Lambda does for non-text content types.
    pub base64: bool,
}

impl HttpEvent<'_> {
    /// The event JSON, for the URL's root (where Meta posts).
    pub fn to_json(&self) -> Value {
        self.to_json_at("/")
    }

    /// The event JSON for the request path `path` (`/stages`).
    pub fn to_json_at(&self, path: &str) -> Value {
        let fixture = match self.front {
            HttpFront::FunctionUrl => FUNCTION_URL,
            HttpFront::HttpApi => HTTP_API,
        };
        let mut event: Value = serde_json::from_str(fixture).unwrap_or_else(|_| json!({}));
        let raw_query = self
            .query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let query: Map<String, Value> = self
            .query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        let mut headers = Map::new();
        headers.insert("content-type".into(), json!("application/json"));
        for (k, v) in self.headers {
            headers.insert((*k).to_owned(), json!(v));
        }
        let (body, encoded) = if self.base64 {
            (
                base64::engine::general_purpose::STANDARD.encode(self.body),
                true,
            )
        } else {
            (String::from_utf8_lossy(self.body).into_owned(), false)
        };
        if let Some(object) = event.as_object_mut() {
            object.insert("rawPath".into(), json!(path));
            object.insert("rawQueryString".into(), json!(raw_query));
            if query.is_empty() {
                object.remove("queryStringParameters");
            } else {
                object.insert("queryStringParameters".into(), Value::Object(query));
            }
            object.insert("headers".into(), Value::Object(headers));
            object.remove("cookies");
            object.remove("pathParameters");
            object.insert("body".into(), json!(body));
            object.insert("isBase64Encoded".into(), json!(encoded));
            if let Some(http) = object
                .get_mut("requestContext")
                .and_then(|c| c.get_mut("http"))
                .and_then(Value::as_object_mut)
            {
                http.insert("method".into(), json!(self.method));
                http.insert("path".into(), json!(path));
            }
        }
        event
    }
}

/// An SQS event with one record per body, in the shape `sam local generate-event sqs
/// receive-message` makes; message ids are `msg-0`, `msg-1`, ...
pub fn sqs_event(bodies: &[String]) -> Value {
    let records: Vec<(String, String, String)> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| (format!("msg-{i}"), format!("handle-{i}"), body.clone()))
        .collect();
    sqs_event_from(&records)
}

/// An SQS event of `(message_id, receipt_handle, body)` records, e.g. messages just
/// received from a real (moto) queue, in the shape of `sam local generate-event sqs`.
pub fn sqs_event_from(records: &[(String, String, String)]) -> Value {
    let fixture: Value = serde_json::from_str(SQS).unwrap_or_else(|_| json!({"Records": [{}]}));
    let template = fixture
        .get("Records")
        .and_then(|r| r.get(0))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let records: Vec<Value> = records
        .iter()
        .map(|(id, handle, body)| {
            let mut record = template.clone();
            if let Some(object) = record.as_object_mut() {
                object.insert("messageId".into(), json!(id));
                object.insert("receiptHandle".into(), json!(handle));
                object.insert("body".into(), json!(body));
            }
            record
        })
        .collect();
    json!({ "Records": records })
}

/// The scheduled event `sam local generate-event cloudwatch scheduled-event` makes.
pub fn scheduled_event() -> Value {
    serde_json::from_str(SCHEDULED).unwrap_or_else(|_| json!({}))
}

/// A DynamoDB stream batch as Lambda's poller hands it to a function, from `GetRecords`
/// results (the shape of `sam local generate-event dynamodb update`).
pub fn dynamodb_stream_event(
    records: &[aws_sdk_dynamodbstreams::types::Record],
    stream_arn: &str,
) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|record| {
            let data = record.dynamodb();
            let mut dynamodb = json!({
                "SequenceNumber": data.and_then(|d| d.sequence_number()).unwrap_or_default(),
                "SizeBytes": data.and_then(|d| d.size_bytes()).unwrap_or_default(),
                "StreamViewType": data.and_then(|d| d.stream_view_type()).map(|v| v.as_str()).unwrap_or("NEW_IMAGE"),
            });
            if let Some(keys) = data.and_then(|d| d.keys.as_ref()) {
                dynamodb["Keys"] = stream_item_json(keys);
            }
            if let Some(image) = data.and_then(|d| d.new_image.as_ref()) {
                dynamodb["NewImage"] = stream_item_json(image);
            }
            json!({
                "eventID": record.event_id().unwrap_or_default(),
                "eventName": record.event_name().map(|n| n.as_str()).unwrap_or_default(),
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": record.aws_region().unwrap_or("us-east-1"),
                "dynamodb": dynamodb,
                "eventSourceARN": stream_arn,
            })
        })
        .collect();
    json!({ "Records": records })
}

fn stream_item_json(
    item: &std::collections::HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>,
) -> Value {
    Value::Object(
        item.iter()
            .map(|(k, v)| (k.clone(), stream_attribute_json(v)))
            .collect(),
    )
}

fn stream_attribute_json(value: &aws_sdk_dynamodbstreams::types::AttributeValue) -> Value {
    use aws_sdk_dynamodbstreams::types::AttributeValue as A;
    match value {
        A::S(s) => json!({ "S": s }),
        A::N(n) => json!({ "N": n }),
        A::Bool(b) => json!({ "BOOL": b }),
        A::Null(_) => json!({ "NULL": true }),
        A::L(list) => json!({ "L": list.iter().map(stream_attribute_json).collect::<Vec<_>>() }),
        A::M(map) => json!({ "M": stream_item_json(map) }),
        A::Ss(list) => json!({ "SS": list }),
        A::Ns(list) => json!({ "NS": list }),
        _ => Value::Null,
    }
}
