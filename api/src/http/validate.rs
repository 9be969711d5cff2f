//! Field-by-field validation of JSON bodies that reports every invalid, missing or unknown field
//! at once (422 with `errors`), instead of stopping at the first as serde derive would.

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::http::error::{ApiError, FieldErrors};

/// A JSON object being validated.
pub struct Fields {
    map: Map<String, Value>,
    errors: FieldErrors,
}

impl Fields {
    /// Starts validating `map`; every key not in `allowed` is reported as unknown.
    pub fn new(map: Map<String, Value>, allowed: &[&str]) -> Self {
        let mut errors = FieldErrors::new();
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                errors.insert(key.clone(), vec!["is not a known field".to_string()]);
            }
        }
        Self { map, errors }
    }

    /// An empty body, for endpoints where every field is optional.
    pub fn from_optional(map: Option<Map<String, Value>>, allowed: &[&str]) -> Self {
        Self::new(map.unwrap_or_default(), allowed)
    }

    /// Records an error against a field.
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.entry(field.to_string()).or_default().push(message.into());
    }

    /// Whether the body has this field (even as `null`).
    pub fn has(&self, field: &str) -> bool {
        self.map.contains_key(field)
    }

    /// Whether no field has been found invalid so far.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    /// Whether the body has no fields at all.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A field that must be present and valid.
    pub fn required<T>(&mut self, field: &str, parse: impl FnOnce(&Value) -> Result<T, String>) -> Option<T> {
        match self.map.get(field) {
            None | Some(Value::Null) => {
                self.error(field, "is required");
                None
            }
            Some(value) => self.check(field, parse(value)),
        }
    }

    /// A field that may be absent (`None`); when present it must be valid (`Some`).
    pub fn optional<T>(&mut self, field: &str, parse: impl FnOnce(&Value) -> Result<T, String>) -> Option<T> {
        match self.map.get(field) {
            None => None,
            Some(value) => self.check(field, parse(value)),
        }
    }

    fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.error(field, message)).ok()
    }

    /// Ends validation: `Err(422)` if any field was invalid.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// Parsers for [`Fields::required`] and [`Fields::optional`].
pub mod parse {
    use super::*;

    /// A JSON string.
    pub fn string(value: &Value) -> Result<String, String> {
        value.as_str().map(str::to_string).ok_or_else(|| "must be a string".to_string())
    }

    /// A string or `null` (for clearable fields).
    pub fn nullable_string(value: &Value) -> Result<Option<String>, String> {
        match value {
            Value::Null => Ok(None),
            other => string(other).map(Some),
        }
    }

    /// A UUID in a string.
    pub fn uuid(value: &Value) -> Result<Uuid, String> {
        value.as_str().and_then(|s| Uuid::parse_str(s).ok()).ok_or_else(|| "must be a UUID".to_string())
    }

    /// An array of UUIDs.
    pub fn uuid_list(value: &Value) -> Result<Vec<Uuid>, String> {
        let items = value.as_array().ok_or_else(|| "must be an array of UUIDs".to_string())?;
        items.iter().map(uuid).collect::<Result<_, _>>().map_err(|_| "must be an array of UUIDs".into())
    }

    /// A date written exactly `YYYY-MM-DD`: ten characters, four-digit year, two-digit month and
    /// day, nothing around them (chrono's `%Y-%m-%d` alone also takes signs, five-digit years,
    /// one-digit months and leading spaces).
    pub fn date(value: &Value) -> Result<NaiveDate, String> {
        value.as_str().and_then(strict_date).ok_or_else(|| "must be a date YYYY-MM-DD".to_string())
    }

    /// The first and last release dates a movie may have.
    pub const RELEASE_DATES: (NaiveDate, NaiveDate) = (
        NaiveDate::from_ymd_opt(1870, 1, 1).expect("a date"),
        NaiveDate::from_ymd_opt(2100, 12, 31).expect("a date"),
    );

    /// A movie's release date: [`date`], within [`RELEASE_DATES`].
    pub fn release_date(value: &Value) -> Result<NaiveDate, String> {
        let date = date(value)?;
        let (first, last) = RELEASE_DATES;
        if date < first || date > last {
            return Err(format!("must lie in {first}..={last}"));
        }
        Ok(date)
    }

    fn strict_date(text: &str) -> Option<NaiveDate> {
        let bytes = text.as_bytes();
        let shape = bytes.len() == 10
            && bytes
                .iter()
                .enumerate()
                .all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() });
        if !shape {
            return None;
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
    }

    /// An RFC 3339 time, normalised to UTC at the microsecond precision PostgreSQL keeps.
    pub fn time(value: &Value) -> Result<DateTime<Utc>, String> {
        value
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc).trunc_subsecs(6))
            .ok_or_else(|| "must be an RFC 3339 time".to_string())
    }

    /// A JSON number.
    pub fn number(value: &Value) -> Result<f64, String> {
        value.as_f64().ok_or_else(|| "must be a number".to_string())
    }

    /// A whole number that fits in 64 bits.
    pub fn integer(value: &Value) -> Result<i64, String> {
        value.as_i64().ok_or_else(|| "must be a whole number".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value, allowed: &[&str]) -> Fields {
        Fields::new(value.as_object().unwrap().clone(), allowed)
    }

    #[test]
    fn every_missing_invalid_and_unknown_field_is_reported_at_once() {
        let mut f = fields(json!({"b": 5, "x": 1}), &["a", "b"]);
        assert_eq!(f.required("a", parse::string), None);
        assert_eq!(f.required("b", parse::string), None);
        let Err(ApiError::Validation(errors)) = f.finish() else { panic!("expected 422") };
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["a", "b", "x"]);
    }

    #[test]
    fn dates_are_exactly_four_two_and_two_digits() {
        for good in ["1999-01-01", "0001-12-31", "2026-02-28"] {
            assert!(parse::date(&json!(good)).is_ok(), "{good}");
        }
        let bad = [
            "-5000-01-01",
            " 1999-1-1",
            "1999-1-1",
            "+1999-01-01",
            "19999-01-01",
            "1999-01-01 ",
            "1999-02-30",
            "1999/01/01",
            "1999-01-0a",
            "９９９-01-01",
            "",
            "2026-13-01",
        ];
        for bad in bad {
            assert!(parse::date(&json!(bad)).is_err(), "{bad:?}");
        }
        assert!(parse::date(&json!(19990101)).is_err());
    }

    #[test]
    fn release_dates_lie_in_1870_to_2100() {
        for good in ["1870-01-01", "2100-12-31", "1999-06-15"] {
            assert!(parse::release_date(&json!(good)).is_ok(), "{good}");
        }
        for bad in ["1869-12-31", "2101-01-01", "0001-01-01", "9999-12-31"] {
            let error = parse::release_date(&json!(bad)).unwrap_err();
            assert_eq!(error, "must lie in 1870-01-01..=2100-12-31", "{bad}");
        }
    }

    #[test]
    fn optional_fields_may_be_absent_but_not_invalid() {
        let mut f = fields(json!({"b": "2026-02-30"}), &["a", "b"]);
        assert_eq!(f.optional("a", parse::date), None);
        assert_eq!(f.optional("b", parse::date), None);
        assert!(f.finish().is_err());
        let mut f = fields(json!({"a": "2026-02-28"}), &["a"]);
        assert!(f.optional("a", parse::date).is_some());
        assert!(f.finish().is_ok());
    }
}
