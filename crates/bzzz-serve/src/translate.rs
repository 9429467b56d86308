//! The dialects of inference (OpenAI's chat completions, Ollama's
//! `/api/chat` and `/api/generate`) and the translation between them:
//! pure functions over JSON, shared by the HTTP routes (a node whose
//! backend speaks the other dialect) and the agents' model client.

use std::time::Instant;

use serde_json::{Map, Value, json};

/// The API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    /// Ollama's `/api/chat`.
    OllamaChat,
    /// Ollama's `/api/generate`.
    OllamaGenerate,
}

impl Dialect {
    /// The route of this dialect.
    pub fn path(self) -> &'static str {
        match self {
            Dialect::OpenAi => "/v1/chat/completions",
            Dialect::OllamaChat => "/api/chat",
            Dialect::OllamaGenerate => "/api/generate",
        }
    }
}

/// An OpenAI chat-completions request: `messages` (already
/// `{role, content}`), greedy, with the reply constrained to `schema`
/// (`response_format` `json_schema`, which llama.cpp turns into a
/// grammar) when given.
pub fn chat_request(
    model: &str,
    messages: &[Value],
    schema: Option<&Value>,
    max_tokens: u32,
) -> Value {
    let mut body = json!({
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": false,
    });
    if let Some(s) = schema {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": "action", "strict": true, "schema": s}
        });
    }
    body
}

/// The assistant's text of an OpenAI chat-completions answer.
pub fn reply_content(v: &Value) -> Option<&str> {
    v["choices"][0]["message"]["content"].as_str()
}

/// Ollama's request → the OpenAI body for llama.cpp's server.
pub fn to_openai(req: &Value, dialect: Dialect, stream: bool) -> Value {
    let mut messages = Vec::new();
    match dialect {
        Dialect::OllamaGenerate => {
            if let Some(sys) = req.get("system").and_then(Value::as_str) {
                messages.push(json!({"role": "system", "content": sys}));
            }
            let prompt = req.get("prompt").and_then(Value::as_str).unwrap_or("");
            messages.push(json!({"role": "user", "content": prompt}));
        }
        _ => {
            for m in req
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                messages.push(json!({
                    "role": m.get("role").and_then(Value::as_str).unwrap_or("user"),
                    "content": m.get("content").and_then(Value::as_str).unwrap_or(""),
                }));
            }
        }
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    out.insert("stream".into(), Value::Bool(stream));
    if let Some(o) = req.get("options").and_then(Value::as_object) {
        for (from, to) in [
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("seed", "seed"),
            ("stop", "stop"),
            ("num_predict", "max_tokens"),
            ("repeat_penalty", "repeat_penalty"),
            ("presence_penalty", "presence_penalty"),
            ("frequency_penalty", "frequency_penalty"),
        ] {
            if let Some(v) = o.get(from) {
                out.insert(to.into(), v.clone());
            }
        }
    }
    if req.get("format").and_then(Value::as_str) == Some("json") {
        out.insert("response_format".into(), json!({"type": "json_object"}));
    }
    Value::Object(out)
}

/// Ollama's final statistics from llama.cpp's `timings` (nanoseconds).
pub fn stats(timings: Option<&Value>, started: Instant) -> Map<String, Value> {
    let t = timings.cloned().unwrap_or(Value::Null);
    let ms = |k: &str| (t[k].as_f64().unwrap_or(0.0) * 1e6) as u64;
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let mut m = Map::new();
    m.insert(
        "total_duration".into(),
        json!(started.elapsed().as_nanos() as u64),
    );
    m.insert("load_duration".into(), json!(0));
    m.insert("prompt_eval_count".into(), json!(n("prompt_n")));
    m.insert("prompt_eval_duration".into(), json!(ms("prompt_ms")));
    m.insert("eval_count".into(), json!(n("predicted_n")));
    m.insert("eval_duration".into(), json!(ms("predicted_ms")));
    m
}

/// One Ollama answer object stamped `created_at`: the text (as `message`
/// or `response`), and `done` with the statistics when final.
pub fn ollama_obj(
    model: &str,
    dialect: Dialect,
    text: &str,
    done: Option<(&str, Map<String, Value>)>,
    created_at: &str,
) -> Value {
    let mut v = json!({"model": model, "created_at": created_at});
    if dialect == Dialect::OllamaGenerate {
        v["response"] = json!(text);
    } else {
        v["message"] = json!({"role": "assistant", "content": text});
    }
    match done {
        None => v["done"] = json!(false),
        Some((reason, stats)) => {
            v["done"] = json!(true);
            v["done_reason"] = json!(reason);
            if let Some(o) = v.as_object_mut() {
                o.extend(stats);
            }
        }
    }
    v
}

/// What one server-sent-events line of an OpenAI stream carries.
#[derive(Debug, Default, PartialEq)]
pub struct StreamEvent {
    /// The text it adds (empty for none).
    pub delta: String,
    pub finish_reason: Option<String>,
    /// llama.cpp's `timings`, on the last event.
    pub timings: Option<Value>,
}

/// Parses one line of an OpenAI stream (`data: {...}`); `None` for other
/// lines, `[DONE]` and what does not parse.
pub fn stream_event(line: &str) -> Option<StreamEvent> {
    let data = line.trim().strip_prefix("data:")?.trim();
    if data == "[DONE]" {
        return None;
    }
    let v: Value = serde_json::from_str(data).ok()?;
    Some(StreamEvent {
        delta: v["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        finish_reason: v["choices"][0]["finish_reason"].as_str().map(str::to_owned),
        timings: v.get("timings").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_translate() {
        let req = json!({"model": "m", "prompt": "hi", "system": "be brief",
            "options": {"num_predict": 5, "temperature": 0.1, "bogus": 1}, "format": "json"});
        let o = to_openai(&req, Dialect::OllamaGenerate, false);
        assert_eq!(o["messages"][0]["role"], "system");
        assert_eq!(o["messages"][1]["content"], "hi");
        assert_eq!(o["max_tokens"], 5);
        assert!(o.get("bogus").is_none());
        assert_eq!(o["response_format"]["type"], "json_object");
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let o = to_openai(&req, Dialect::OllamaChat, true);
        assert_eq!(o["messages"][0]["content"], "x");
        assert_eq!(o["stream"], true);
        let done = ollama_obj(
            "m",
            Dialect::OllamaChat,
            "",
            Some((
                "stop",
                stats(
                    Some(&json!({"prompt_n": 3, "predicted_n": 4, "predicted_ms": 2.0})),
                    Instant::now(),
                ),
            )),
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(done["done"], true);
        assert_eq!(done["eval_count"], 4);
        assert_eq!(done["eval_duration"], 2_000_000);
        assert_eq!(done["message"]["role"], "assistant");
    }

    #[test]
    fn stream_lines_and_agent_requests() {
        let e =
            stream_event(r#"data: {"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}"#)
                .expect("event");
        assert_eq!(e.delta, "hi");
        assert_eq!(e.finish_reason, None);
        assert!(stream_event("data: [DONE]").is_none());
        assert!(stream_event(": keep-alive").is_none());
        let schema = json!({"type": "object"});
        let r = chat_request(
            "m",
            &[json!({"role": "user", "content": "x"})],
            Some(&schema),
            64,
        );
        assert_eq!(r["response_format"]["json_schema"]["schema"], schema);
        assert_eq!(r["temperature"], 0);
        let a = json!({"choices": [{"message": {"content": "{}"}}]});
        assert_eq!(reply_content(&a), Some("{}"));
    }
}
