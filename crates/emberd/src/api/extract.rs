//! Getting requests in and engine calls run: [`ApiJson`] (a JSON body, parsed with the path of
//! the offending field in the error), [`QueryPairs`] (a query string's pairs, repeated keys
//! kept), and [`blocking`] (an engine call on tokio's blocking threads).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body. Errors: 415 without a JSON content type, 413 over the size limit, 400
/// naming the field (`labels.team: invalid type: integer, expected a string`) otherwise.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|ct| {
                let mime = ct.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(format!(
                    "the body is larger than the {} bytes this route accepts",
                    super::MAX_JSON_BODY
                ))
            } else {
                ApiError::invalid(format!("reading the body: {}", rejection.body_text()))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid(
            "the body is empty; a JSON object is expected",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::invalid(format!("the body: {inner}"))
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })
}

/// A query string's `key=value` pairs, decoded, in order (repeated keys kept).
#[derive(Debug, Clone, Default)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl QueryPairs {
    /// Decodes a query string (without its `?`).
    pub fn parse(query: Option<&str>) -> Result<QueryPairs, ApiError> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or(""))
            .map(QueryPairs)
            .map_err(|e| ApiError::invalid(format!("the query string: {e}")))
    }

    /// Every value of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, if given once; an error if given twice.
    pub fn one<'a>(&'a self, key: &'a str) -> Result<Option<&'a str>, ApiError> {
        let mut values = self.all(key);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::invalid(format!(
                "query parameter {key}: given more than once"
            )));
        }
        Ok(first)
    }

    /// Refuses parameters not in `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::invalid(format!(
                "query parameter {k:?} is not known here (known: {})",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        QueryPairs::parse(parts.uri.query())
    }
}

/// Runs a blocking engine call: on a multi-threaded runtime (emberd's) in place, on this
/// worker thread, after handing the worker's other tasks to another thread
/// (`block_in_place`); elsewhere on tokio's blocking threads.
///
/// In place saves two thread hand-offs per request — to a blocking thread and back to a
/// worker to write the answer — which cost ~30 µs and ~180 µs p50 of a create's ~750 µs in
/// the handler on this project's nested 2-vCPU host (`ember bench api`, one client).
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return tokio::task::block_in_place(f);
    }
    tokio::task::spawn_blocking(f).await?
}
