//! The API reference page: the OpenAPI document rendered to plain HTML on the server, so it
//! reads with no network and with JavaScript disabled.

use std::fmt::Write;

use serde_json::Value;
use utoipa::openapi::OpenApi;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45;color:#222}\
code,pre{font-family:ui-monospace,monospace;font-size:.9em}pre{background:#f5f5f5;padding:.75rem;overflow-x:auto}\
.op{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}.m{display:inline-block;min-width:4.5rem;font-weight:bold}\
.get{color:#1a7f37}.post{color:#0969da}.put{color:#9a6700}.delete{color:#cf222e}table{border-collapse:collapse}\
td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}nav a{margin-right:1rem}";

fn ref_name(v: &Value) -> String {
    v.get("$ref").and_then(Value::as_str).and_then(|r| r.rsplit('/').next()).unwrap_or("").to_owned()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The whole page, from the document's JSON form.
pub fn render(doc: &OpenApi) -> String {
    let doc = serde_json::to_value(doc).unwrap_or(Value::Null);
    let info = &doc["info"];
    let title = text(info, "title");
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} API reference</title><style>{STYLE}</style></head><body><h1>{} API {}</h1><p>{}</p>",
        escape(title),
        escape(title),
        escape(text(info, "version")),
        escape(text(info, "description"))
    );
    h.push_str("<p>Authenticate with <code>Authorization: Bearer &lt;key&gt;</code>. Errors are <code>application/problem+json</code> with a stable <code>code</code>. The machine-readable document is at <a href=\"/openapi.json\">/openapi.json</a>.</p><nav>");
    let mut ops: Vec<(String, String, &Value)> = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in ["get", "post", "put", "delete", "patch"] {
                if let Some(op) = item.get(method) {
                    ops.push((path.clone(), method.to_owned(), op));
                }
            }
        }
    }
    for (path, method, _) in &ops {
        let _ = write!(
            h,
            "<a href=\"#{}\">{} {}</a> ",
            anchor(method, path),
            method.to_uppercase(),
            escape(path)
        );
    }
    h.push_str("</nav>");
    for (path, method, op) in &ops {
        let _ = write!(
            h,
            "<section class=\"op\" id=\"{}\"><h2><span class=\"m {method}\">{}</span> <code>{}</code></h2><p>{}</p>",
            anchor(method, path),
            method.to_uppercase(),
            escape(path),
            escape(text(op, "summary"))
        );
        if let Some(params) = op["parameters"].as_array() {
            h.push_str("<table><tr><th>parameter</th><th>in</th><th>required</th><th>description</th></tr>");
            for p in params {
                let required = p["required"].as_bool().unwrap_or(false);
                let _ = write!(
                    h,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(text(p, "name")),
                    escape(text(p, "in")),
                    if required { "yes" } else { "no" },
                    escape(text(p, "description"))
                );
            }
            h.push_str("</table>");
        }
        if let Some(content) = op["requestBody"]["content"].as_object() {
            for (ct, c) in content {
                let schema = ref_name(&c["schema"]);
                let _ = write!(
                    h,
                    "<p>Request body: <code>{}</code> <a href=\"#schema-{}\">{}</a></p>",
                    escape(ct),
                    escape(&schema),
                    escape(&schema)
                );
            }
        }
        h.push_str("<table><tr><th>status</th><th>body</th><th>meaning</th></tr>");
        if let Some(responses) = op["responses"].as_object() {
            for (status, r) in responses {
                let schema = r["content"]
                    .as_object()
                    .and_then(|c| c.values().next())
                    .map(|c| ref_name(&c["schema"]))
                    .unwrap_or_default();
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td><a href=\"#schema-{}\">{}</a></td><td>{}</td></tr>",
                    escape(status),
                    escape(&schema),
                    escape(&schema),
                    escape(text(r, "description"))
                );
            }
        }
        h.push_str("</table></section>");
    }
    h.push_str("<h2>Schemas</h2>");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            let pretty = serde_json::to_string_pretty(schema).unwrap_or_default();
            let _ = write!(
                h,
                "<section id=\"schema-{}\"><h3>{}</h3><pre>{}</pre></section>",
                escape(name),
                escape(name),
                escape(&pretty)
            );
        }
    }
    h.push_str("</body></html>");
    h
}

fn anchor(method: &str, path: &str) -> String {
    let mut a = String::from(method);
    for c in path.chars() {
        a.push(if c.is_ascii_alphanumeric() { c } else { '-' });
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}
