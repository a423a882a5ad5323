//! `headers`: set or remove request and response headers (`customRequestHeaders`,
//! `customResponseHeaders`; an empty value removes the header, as in Traefik).

use http::{HeaderName, HeaderValue};

use super::{Action, Middleware, RequestCtx};

#[derive(Debug)]
pub struct Headers {
    request: Vec<(HeaderName, Option<HeaderValue>)>,
    response: Vec<(HeaderName, Option<HeaderValue>)>,
}

fn compile(
    field: &str,
    map: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, Option<HeaderValue>)>, crate::Error> {
    map.iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                crate::Error::compile(
                    format!("headers.{field}"),
                    format!("invalid header name `{k}`"),
                )
            })?;
            let value = if v.is_empty() {
                None
            } else {
                Some(HeaderValue::from_str(v).map_err(|_| {
                    crate::Error::compile(format!("headers.{field}.{k}"), "invalid header value")
                })?)
            };
            Ok((name, value))
        })
        .collect()
}

fn apply(headers: &mut http::HeaderMap, set: &[(HeaderName, Option<HeaderValue>)]) {
    for (name, value) in set {
        match value {
            Some(v) => {
                headers.insert(name.clone(), v.clone());
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

impl Headers {
    pub fn new(c: &zw_config::Headers) -> Result<Self, crate::Error> {
        Ok(Headers {
            request: compile("customRequestHeaders", &c.custom_request_headers)?,
            response: compile("customResponseHeaders", &c.custom_response_headers)?,
        })
    }
}

impl Middleware for Headers {
    fn on_request(&self, ctx: &mut RequestCtx<'_>) -> Action {
        apply(&mut ctx.parts.headers, &self.request);
        Action::Continue
    }

    fn on_response(&self, parts: &mut http::response::Parts) {
        apply(&mut parts.headers, &self.response);
    }
}
