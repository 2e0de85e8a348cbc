//! Query strings: deserialized into a handler's query type with the offending parameter named in
//! the 400's `errors[]` (`limit: invalid digit found in string`), and refused when a name or
//! value holds the NUL character, which PostgreSQL's text cannot.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use serde::de::DeserializeOwned;
use std::future::{Ready, ready};

use crate::problem::{ApiError, FieldError};

/// A query string of type `T`.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Query<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Deserializes `query` (without the `?`), naming the parameter that failed.
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if name.contains('\0') || value.contains('\0') {
            let field = if name.contains('\0') {
                "query".to_owned()
            } else {
                name.chars().take(100).collect()
            };
            return Err(invalid(
                field,
                "must not contain the NUL character (%00)".to_owned(),
            ));
        }
    }
    let pairs = url::form_urlencoded::parse(query.as_bytes());
    let de = serde_urlencoded::Deserializer::new(pairs);
    serde_path_to_error::deserialize::<_, T>(de).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        let field = if path.is_empty() || path == "." {
            // Unknown, missing and repeated parameters are named in serde's message only.
            named_in(&message).unwrap_or_else(|| "query".to_owned())
        } else {
            path
        };
        invalid(field, message)
    })
}

/// The first name quoted in serde's message (`unknown field `bogus`, expected …`).
fn named_in(message: &str) -> Option<String> {
    let (_, rest) = message.split_once('`')?;
    let (name, _) = rest.split_once('`')?;
    (!name.is_empty()).then(|| name.chars().take(100).collect())
}

fn invalid(field: String, message: String) -> ApiError {
    ApiError::BadRequest {
        detail: format!("invalid query string: {field}: {message}"),
        errors: vec![FieldError::new(field, message)],
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(parse(req.query_string()).map(Query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct List {
        limit: Option<i64>,
        event: Option<String>,
    }

    fn field(query: &str) -> String {
        match parse::<List>(query).unwrap_err() {
            ApiError::BadRequest { errors, .. } => errors[0].field.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_the_parameter() {
        assert_eq!(field("limit=abc"), "limit");
        assert_eq!(field("limit=5&bogus=1"), "bogus");
        assert_eq!(field("event=a%00b"), "event");
        assert_eq!(parse::<List>("limit=5&event=a.b").unwrap().limit, Some(5));
    }
}
