//! Output formats of `ferry consume`: a template with placeholders, or JSON lines.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_kafka::client::ConsumedRecord;

use super::{CliError, CliResult};

/// How each consumed message is printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// A template, one line per message.
    Template(Vec<Piece>),
    /// One JSON object per line.
    Json,
}

/// One part of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as is.
    Text(String),
    /// `%T`
    Topic,
    /// `%p`
    Partition,
    /// `%o`
    Offset,
    /// `%t`
    Timestamp,
    /// `%k`
    Key,
    /// `%v`
    Value,
    /// `%h`: `k=v,k2=v2`
    Headers,
}

impl Format {
    /// Parses `--format`: `json`, or a template with `%T %p %o %t %k %v %h %%` and the
    /// escapes `\n \t \\`.
    pub fn parse(spec: &str) -> CliResult<Format> {
        if spec == "json" {
            return Ok(Format::Json);
        }
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = spec.chars();
        while let Some(c) = chars.next() {
            let piece = match c {
                '%' => match chars.next() {
                    Some('%') => {
                        text.push('%');
                        continue;
                    }
                    Some('T') => Piece::Topic,
                    Some('p') => Piece::Partition,
                    Some('o') => Piece::Offset,
                    Some('t') => Piece::Timestamp,
                    Some('k') => Piece::Key,
                    Some('v') => Piece::Value,
                    Some('h') => Piece::Headers,
                    other => {
                        return Err(CliError::Usage(format!(
                        "format {spec:?}: unknown placeholder %{} (known: %T %p %o %t %k %v %h %%)",
                        other.map(String::from).unwrap_or_default()
                    )))
                    }
                },
                '\\' => {
                    match chars.next() {
                        Some('n') => text.push('\n'),
                        Some('t') => text.push('\t'),
                        Some('\\') => text.push('\\'),
                        Some(other) => {
                            text.push('\\');
                            text.push(other);
                        }
                        None => text.push('\\'),
                    }
                    continue;
                }
                c => {
                    text.push(c);
                    continue;
                }
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(piece);
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Format::Template(pieces))
    }

    /// Appends the line for `record` of `topic` (newline included) to `out`.
    pub fn render(&self, topic: &str, record: &ConsumedRecord, out: &mut Vec<u8>) {
        match self {
            Format::Json => {
                let line = JsonRecord {
                    topic,
                    partition: record.partition,
                    offset: record.offset,
                    timestamp: record.timestamp_ms,
                    key: lossy(record.key.as_ref()),
                    value: lossy(record.value.as_ref()),
                    headers: record
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), lossy(v.as_ref())))
                        .collect(),
                };
                // Serializing plain strings and numbers into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &line);
            }
            Format::Template(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                        Piece::Topic => out.extend_from_slice(topic.as_bytes()),
                        Piece::Partition => {
                            out.extend_from_slice(record.partition.to_string().as_bytes())
                        }
                        Piece::Offset => {
                            out.extend_from_slice(record.offset.to_string().as_bytes())
                        }
                        Piece::Timestamp => {
                            out.extend_from_slice(record.timestamp_ms.to_string().as_bytes())
                        }
                        Piece::Key => {
                            out.extend_from_slice(record.key.as_deref().unwrap_or_default())
                        }
                        Piece::Value => {
                            out.extend_from_slice(record.value.as_deref().unwrap_or_default())
                        }
                        Piece::Headers => {
                            for (i, (k, v)) in record.headers.iter().enumerate() {
                                if i > 0 {
                                    out.push(b',');
                                }
                                out.extend_from_slice(k.as_bytes());
                                out.push(b'=');
                                out.extend_from_slice(v.as_deref().unwrap_or_default());
                            }
                        }
                    }
                }
            }
        }
        out.push(b'\n');
    }
}

/// One message as a JSON line, fields in reading order.
#[derive(serde::Serialize)]
struct JsonRecord<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<Cow<'a, str>>,
    value: Option<Cow<'a, str>>,
    headers: BTreeMap<&'a str, Option<Cow<'a, str>>>,
}

/// The bytes as text (invalid UTF-8 replaced), or `None` for null.
fn lossy(bytes: Option<&Bytes>) -> Option<Cow<'_, str>> {
    bytes.map(|b| String::from_utf8_lossy(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ConsumedRecord {
        ConsumedRecord {
            partition: 2,
            offset: 41,
            timestamp_ms: 1000,
            log_append_time: false,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"hello")),
            headers: vec![
                ("a".to_owned(), Some(Bytes::from_static(b"1"))),
                ("b".to_owned(), None),
            ],
        }
    }

    fn render(spec: &str, record: &ConsumedRecord) -> String {
        let mut out = Vec::new();
        Format::parse(spec)
            .expect("format")
            .render("t", record, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn templates() {
        assert_eq!(render("%v", &record()), "hello\n");
        assert_eq!(
            render("%T/%p@%o %t %k=%v [%h] 100%%", &record()),
            "t/2@41 1000 k=hello [a=1,b=] 100%\n"
        );
        assert_eq!(render("%k\\t%v\\n--", &record()), "k\thello\n--\n");
        let mut nulls = record();
        nulls.key = None;
        nulls.value = None;
        assert_eq!(render("[%k][%v]", &nulls), "[][]\n");
        assert!(Format::parse("%x").is_err());
        assert!(Format::parse("trailing %").is_err());
    }

    #[test]
    fn json_lines() {
        let line = render("json", &record());
        assert!(
            line.starts_with(r#"{"topic":"t","partition":2,"offset":41,"#),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("json");
        assert_eq!(v["topic"], "t");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 41);
        assert_eq!(v["key"], "k");
        assert_eq!(v["value"], "hello");
        assert_eq!(v["headers"]["a"], "1");
        assert!(v["headers"]["b"].is_null());
    }
}
