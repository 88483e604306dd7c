//! The query protocol: a form body (`Action=SendMessage&QueueUrl=…&MessageAttribute.1.Name=…`)
//! answered in XML (`<SendMessageResponse><SendMessageResult>…`). The form is turned into the
//! JSON protocol's input shape (numbered members become lists, `Attribute.N.Name/Value` a map,
//! `…BatchRequestEntry.N` the `Entries`), and the JSON-shaped output into SQS's flattened XML,
//! so the operations exist once.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{unsupported, SqsError, ACTIONS, XMLNS};

/// The action and input of a query-protocol request. A request without `QueueUrl` sent to a
/// queue's URL (`POST /ACCOUNT/NAME`) is for that queue, as the old SDKs send it.
pub fn decode(req: &http::Request<Bytes>) -> Result<(String, Value), SqsError> {
    let mut tree = Map::new();
    let mut action = None;
    for (k, v) in form_urlencoded::parse(req.body()) {
        match k.as_ref() {
            "Action" => action = Some(v.into_owned()),
            "Version" => {}
            _ => insert(&mut tree, &k.split('.').collect::<Vec<_>>(), v.into_owned()),
        }
    }
    let action = action.ok_or_else(|| SqsError::missing("Action"))?;
    if !ACTIONS.contains(&action.as_str()) {
        return Err(unsupported(&action));
    }
    let mut input = shape(Value::Object(tree));
    let path = req.uri().path().trim_matches('/');
    if let Value::Object(o) = &mut input {
        if !o.contains_key("QueueUrl") && path.contains('/') {
            o.insert("QueueUrl".into(), Value::String(format!("http://localhost/{path}")));
        }
    }
    Ok((action, input))
}

/// Put `value` at `path` (`Entry.1.Id`) in a tree of objects.
fn insert(tree: &mut Map<String, Value>, path: &[&str], value: String) {
    let Some((first, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        tree.insert((*first).to_owned(), Value::String(value));
        return;
    }
    let child = tree.entry((*first).to_owned()).or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(o) = child {
        insert(o, rest, value);
    }
}

/// Numbered members to lists and the query names to the JSON protocol's.
fn shape(v: Value) -> Value {
    let Value::Object(o) = v else { return v };
    if !o.is_empty() && o.keys().all(|k| k.parse::<u32>().is_ok()) {
        let mut items: Vec<(u32, Value)> = o.into_iter().map(|(k, v)| (k.parse().unwrap_or(0), shape(v))).collect();
        items.sort_by_key(|(n, _)| *n);
        return Value::Array(items.into_iter().map(|(_, v)| v).collect());
    }
    let mut out = Map::new();
    for (k, v) in o {
        let v = shape(v);
        match k.as_str() {
            "Attribute" | "MessageAttribute" | "MessageSystemAttribute" => {
                out.insert(format!("{k}s"), name_value_map(v, "Name", "Value"));
            }
            "Tag" => {
                out.insert("Tags".into(), name_value_map(v, "Key", "Value"));
            }
            "AttributeName"
            | "MessageAttributeName"
            | "MessageSystemAttributeName"
            | "StringListValue"
            | "BinaryListValue"
            | "TagKey" => {
                out.insert(format!("{k}s"), v);
            }
            k if k.ends_with("BatchRequestEntry") => {
                out.insert("Entries".into(), v);
            }
            _ => {
                out.insert(k, v);
            }
        }
    }
    Value::Object(out)
}

/// `[{Name: n, Value: v}, …]` to `{n: v, …}`.
fn name_value_map(list: Value, key: &str, value: &str) -> Value {
    let mut map = Map::new();
    for item in list.as_array().into_iter().flatten() {
        if let (Some(Value::String(k)), Some(v)) = (item.get(key), item.get(value)) {
            map.insert(k.clone(), v.clone());
        }
    }
    Value::Object(map)
}

/// XML text: the five entities, and carriage returns kept as references (XML readers
/// normalize a literal one away).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

/// The element name of each item of list member `key`.
fn item_name(key: &str, action: &str) -> String {
    match key {
        "QueueUrls" => "QueueUrl".into(),
        "Messages" => "Message".into(),
        "Successful" => format!("{action}ResultEntry"),
        "Failed" => "BatchResultErrorEntry".into(),
        "StringListValues" => "StringListValue".into(),
        "BinaryListValues" => "BinaryListValue".into(),
        other => other.into(),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        other => other.to_string(),
    }
}

/// The members of `obj` as SQS's flattened XML.
fn members(out: &mut String, obj: &Map<String, Value>, action: &str) {
    for (k, v) in obj {
        match (k.as_str(), v) {
            ("Attributes" | "MessageAttributes" | "Tags", Value::Object(map)) => {
                let (item, key) = match k.as_str() {
                    "Attributes" => ("Attribute", "Name"),
                    "Tags" => ("Tag", "Key"),
                    _ => ("MessageAttribute", "Name"),
                };
                for (name, value) in map {
                    out.push_str(&format!("<{item}><{key}>{}</{key}><Value>", escape(name)));
                    match value {
                        Value::Object(o) => members(out, o, action),
                        other => out.push_str(&scalar(other)),
                    }
                    out.push_str(&format!("</Value></{item}>"));
                }
            }
            (_, Value::Array(items)) => {
                let item = item_name(k, action);
                for i in items {
                    out.push_str(&format!("<{item}>"));
                    match i {
                        Value::Object(o) => members(out, o, action),
                        other => out.push_str(&scalar(other)),
                    }
                    out.push_str(&format!("</{item}>"));
                }
            }
            (_, Value::Object(o)) => {
                out.push_str(&format!("<{k}>"));
                members(out, o, action);
                out.push_str(&format!("</{k}>"));
            }
            (_, Value::Null) => {}
            (_, other) => out.push_str(&format!("<{k}>{}</{k}>", scalar(other))),
        }
    }
}

fn xml(status: http::StatusCode, body: String, request_id: &str) -> http::Response<Bytes> {
    let mut r = http::Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", http::HeaderValue::from_static("text/xml"));
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

/// A successful answer: `<ACTIONResponse><ACTIONResult>…</ACTIONResult><ResponseMetadata>…`.
pub fn ok(action: &str, output: &Value, request_id: &str) -> http::Response<Bytes> {
    let mut body = format!(r#"<?xml version="1.0"?><{action}Response xmlns="{XMLNS}">"#);
    if let Some(o) = output.as_object().filter(|o| !o.is_empty()) {
        body.push_str(&format!("<{action}Result>"));
        members(&mut body, o, action);
        body.push_str(&format!("</{action}Result>"));
    }
    body.push_str(&format!(
        "<ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{action}Response>",
        escape(request_id)
    ));
    xml(http::StatusCode::OK, body, request_id)
}

/// An error answer (`<ErrorResponse><Error><Type>Sender</Type><Code>…`).
pub fn error(e: &SqsError, request_id: &str) -> http::Response<Bytes> {
    let fault = if e.sender { "Sender" } else { "Receiver" };
    let body = format!(
        r#"<?xml version="1.0"?><ErrorResponse xmlns="{XMLNS}"><Error><Type>{fault}</Type><Code>{}</Code><Message>{}</Message><Detail/></Error><RequestId>{}</RequestId></ErrorResponse>"#,
        escape(e.code),
        escape(&e.message),
        escape(request_id)
    );
    xml(e.status, body, request_id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form(uri: &str, body: &'static str) -> http::Request<Bytes> {
        http::Request::builder().method("POST").uri(uri).body(Bytes::from(body)).unwrap()
    }

    #[test]
    fn forms_become_the_json_shape() {
        let body = "Action=SendMessageBatch&Version=2012-11-05&QueueUrl=http%3A%2F%2Fh%2F000000000000%2Fq\
            &SendMessageBatchRequestEntry.2.Id=b&SendMessageBatchRequestEntry.2.MessageBody=two\
            &SendMessageBatchRequestEntry.1.Id=a&SendMessageBatchRequestEntry.1.MessageBody=one+%26\
            &SendMessageBatchRequestEntry.1.MessageAttribute.1.Name=color\
            &SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.DataType=String\
            &SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringValue=blue\
            &SendMessageBatchRequestEntry.10.Id=c&SendMessageBatchRequestEntry.10.MessageBody=ten";
        let (action, input) = decode(&form("/", body)).unwrap();
        assert_eq!(action, "SendMessageBatch");
        assert_eq!(
            input,
            json!({"QueueUrl": "http://h/000000000000/q", "Entries": [
                {"Id": "a", "MessageBody": "one &", "MessageAttributes": {"color": {"DataType": "String", "StringValue": "blue"}}},
                {"Id": "b", "MessageBody": "two"},
                {"Id": "c", "MessageBody": "ten"},
            ]})
        );
        let body = "Action=CreateQueue&QueueName=q&Attribute.1.Name=VisibilityTimeout&Attribute.1.Value=5\
            &Attribute.2.Name=DelaySeconds&Attribute.2.Value=1";
        let (_, input) = decode(&form("/", body)).unwrap();
        assert_eq!(input, json!({"QueueName": "q", "Attributes": {"VisibilityTimeout": "5", "DelaySeconds": "1"}}));
        let body = "Action=ReceiveMessage&AttributeName.1=All&MessageAttributeName.1=foo.*&MaxNumberOfMessages=3";
        let (_, input) = decode(&form("/000000000000/work", body)).unwrap();
        assert_eq!(
            input,
            json!({"QueueUrl": "http://localhost/000000000000/work", "AttributeNames": ["All"],
                   "MessageAttributeNames": ["foo.*"], "MaxNumberOfMessages": "3"})
        );
        assert_eq!(decode(&form("/", "QueueName=q")).unwrap_err().code, "MissingParameter");
        assert_eq!(decode(&form("/", "Action=TagQueue")).unwrap_err().kind, "UnsupportedOperation");
    }

    #[test]
    fn outputs_become_flattened_xml() {
        let out = json!({"Messages": [{"MessageId": "m", "Body": "a<b\r", "Attributes": {"SenderId": "s"},
            "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "1"}}}]});
        let r = ok("ReceiveMessage", &out, "rid");
        let body = String::from_utf8(r.body().to_vec()).unwrap();
        assert!(body.starts_with(r#"<?xml version="1.0"?><ReceiveMessageResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><ReceiveMessageResult><Message>"#), "{body}");
        assert!(body.contains("<Attribute><Name>SenderId</Name><Value>s</Value></Attribute>"), "{body}");
        assert!(body.contains("<Body>a&lt;b&#xD;</Body>"), "{body}");
        assert!(body.contains("<MessageAttribute><Name>n</Name><Value><DataType>Number</DataType><StringValue>1</StringValue></Value></MessageAttribute>"), "{body}");
        assert!(
            body.ends_with("<ResponseMetadata><RequestId>rid</RequestId></ResponseMetadata></ReceiveMessageResponse>")
        );
        let out = json!({"Successful": [{"Id": "a"}], "Failed": [{"Id": "b", "SenderFault": true, "Code": "X", "Message": "m"}]});
        let body = String::from_utf8(ok("DeleteMessageBatch", &out, "r").body().to_vec()).unwrap();
        assert!(body.contains("<DeleteMessageBatchResultEntry><Id>a</Id></DeleteMessageBatchResultEntry>"), "{body}");
        assert!(body.contains("<BatchResultErrorEntry><Code>X</Code><Id>b</Id><Message>m</Message><SenderFault>true</SenderFault></BatchResultErrorEntry>"), "{body}");
        let body =
            String::from_utf8(ok("ListQueues", &json!({"QueueUrls": ["u1", "u2"]}), "r").body().to_vec()).unwrap();
        assert!(body.contains("<ListQueuesResult><QueueUrl>u1</QueueUrl><QueueUrl>u2</QueueUrl></ListQueuesResult>"));
        let body = String::from_utf8(ok("DeleteQueue", &json!({}), "r").body().to_vec()).unwrap();
        assert!(!body.contains("DeleteQueueResult"));
    }

    #[test]
    fn errors_are_error_responses() {
        let r = error(&SqsError::no_queue("q"), "rid");
        assert_eq!(r.status(), 400);
        let body = String::from_utf8(r.body().to_vec()).unwrap();
        assert!(body.contains("<Type>Sender</Type><Code>AWS.SimpleQueueService.NonExistentQueue</Code>"), "{body}");
        assert!(body.contains("<RequestId>rid</RequestId>"));
    }
}
