//! Keyset pagination shared by every list: newest first, with an opaque cursor that encodes the
//! last row's (created_at, id). A cursor the service did not issue fails to decode.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cursor was not issued by this service")]
pub struct InvalidCursor;

impl Cursor {
    const TAG: &'static str = "c1";

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}:{}:{}",
            Self::TAG,
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(text: &str) -> Result<Self, InvalidCursor> {
        let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| InvalidCursor)?;
        let raw = String::from_utf8(raw).map_err(|_| InvalidCursor)?;
        let mut parts = raw.splitn(3, ':');
        if parts.next() != Some(Self::TAG) {
            return Err(InvalidCursor);
        }
        let micros: i64 = parts
            .next()
            .and_then(|m| m.parse().ok())
            .ok_or(InvalidCursor)?;
        let id = parts
            .next()
            .and_then(|i| Uuid::parse_str(i).ok())
            .ok_or(InvalidCursor)?;
        let created_at = DateTime::from_timestamp_micros(micros).ok_or(InvalidCursor)?;
        Ok(Self { created_at, id })
    }
}

/// One page of a list request.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub limit: i64,
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// Rows to fetch: one more than asked, to know whether a next page exists.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }

    pub fn after_created_at(&self) -> Option<DateTime<Utc>> {
        self.after.map(|c| c.created_at)
    }

    pub fn after_id(&self) -> Option<Uuid> {
        self.after.map(|c| c.id)
    }
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Cuts the extra row fetched by [`PageRequest::fetch_limit`] and turns it into a cursor.
    pub fn from_rows(mut rows: Vec<T>, request: &PageRequest, key: impl Fn(&T) -> Cursor) -> Self {
        let limit = usize::try_from(request.limit).unwrap_or(0);
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| key(last).encode())
        } else {
            None
        };
        Self {
            data: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_foreign_text() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        for bad in [
            "",
            "abc",
            "!!!",
            &URL_SAFE_NO_PAD.encode("c2:1:x"),
            &URL_SAFE_NO_PAD.encode("c1:x:y"),
        ] {
            assert_eq!(Cursor::decode(bad), Err(InvalidCursor), "{bad}");
        }
    }
}
