//! Request bodies as types. A request type derives `Deserialize` (with `deny_unknown_fields`)
//! and `ToSchema`: the one struct is what the handler parses and what the spec describes. Its
//! fields are [`Valid`] values, checked as they are read ([`FromJson`]), so a body that parses is
//! a valid one. A body that does not is diagnosed field by field, so that one 422 names every
//! invalid, missing or unknown field at once ([`body`]); the checks a handler adds (a category
//! that must exist, a time that must not be in the future) join the same 422 ([`Parsed`]).

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::error::{ApiError, FieldErrors};

/// A value a request field holds, read from its JSON with the message a client sees when it is
/// wrong.
pub trait FromJson: Sized {
    /// Reads the value.
    fn from_json(value: &Value) -> Result<Self, String>;
}

/// A request field's value, checked by [`FromJson`] as it is deserialized.
#[derive(Debug, Clone, PartialEq)]
pub struct Valid<T>(pub T);

impl<'de, T: FromJson> Deserialize<'de> for Valid<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        T::from_json(&value).map(Valid).map_err(serde::de::Error::custom)
    }
}

/// `deserialize_with` for an optional field: absent is `None` (with `#[serde(default)]`), while
/// a present value, `null` included, is the field's to judge.
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A body read as the request `T`, with the checks a handler still makes: [`Parsed::field`]
/// gives a field that is valid on its own (whether or not the rest is), [`Parsed::fail`] records
/// a failed check, and [`Parsed::finish`] gives the request, or a 422 naming every invalid,
/// missing (absent or `null`) or unknown field and every failed check.
#[derive(Debug)]
pub struct Parsed<T> {
    request: Option<T>,
    object: Map<String, Value>,
    errors: FieldErrors,
}

impl<T: DeserializeOwned + ToSchema> Parsed<T> {
    /// Reads `object` as `T`.
    pub fn new(object: Map<String, Value>) -> Self {
        // Read in place: the object stays for `field` and the diagnosis.
        let object = Value::Object(object);
        let read = T::deserialize(&object);
        let Value::Object(object) = object else { unreachable!("built as an object") };
        match read {
            Ok(request) => Self { request: Some(request), object, errors: FieldErrors::new() },
            Err(error) => {
                let mut errors = diagnose::<T>(&object);
                if errors.is_empty() {
                    // Every field reads alone but not together: say what serde said.
                    errors.insert("body".into(), vec![error.to_string()]);
                }
                Self { request: None, object, errors }
            }
        }
    }
}

impl<T> Parsed<T> {
    /// The field `name` as `F`, when it is present and reads on its own.
    pub fn field<F: DeserializeOwned>(&self, name: &str) -> Option<F> {
        self.object.get(name).and_then(|value| F::deserialize(value).ok())
    }

    /// Records a failed check against a field.
    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.entry(field.to_string()).or_default().push(message.into());
    }

    /// The request, when it read and every check passed; otherwise 422 naming every field.
    pub fn finish(self) -> Result<T, ApiError> {
        match self.request {
            Some(request) if self.errors.is_empty() => Ok(request),
            _ => Err(ApiError::Validation(self.errors)),
        }
    }
}

/// The request `T` from a body's object, or a 422 that names every invalid, missing (absent or
/// `null`) and unknown field.
pub fn body<T: DeserializeOwned + ToSchema>(object: Map<String, Value>) -> Result<T, ApiError> {
    Parsed::<T>::new(object).finish()
}

/// Each field of `object` judged on its own against `T`'s schema and its own parser.
fn diagnose<T: DeserializeOwned + ToSchema>(object: &Map<String, Value>) -> FieldErrors {
    let (known, required) = match T::schema() {
        RefOr::T(Schema::Object(schema)) => {
            (schema.properties.keys().cloned().collect::<Vec<_>>(), schema.required)
        }
        _ => (Vec::new(), Vec::new()),
    };
    let mut errors = FieldErrors::new();
    for name in &required {
        if object.get(name).is_none_or(Value::is_null) {
            errors.insert(name.clone(), vec!["is required".to_string()]);
        }
    }
    for (name, value) in object {
        if !known.contains(name) {
            errors.insert(name.clone(), vec!["is not a known field".to_string()]);
            continue;
        }
        if errors.contains_key(name) {
            continue;
        }
        // Alone in an object, the field either reads (the error, if any, is about the fields
        // left out) or fails with its own message.
        let alone = Value::Object(Map::from_iter([(name.clone(), value.clone())]));
        if let Err(error) = serde_json::from_value::<T>(alone) {
            let message = error.to_string();
            if !message.starts_with("missing field") {
                errors.insert(name.clone(), vec![message]);
            }
        }
    }
    errors
}

impl FromJson for String {
    fn from_json(value: &Value) -> Result<Self, String> {
        parse::string(value)
    }
}

impl FromJson for Uuid {
    fn from_json(value: &Value) -> Result<Self, String> {
        parse::uuid(value)
    }
}

impl FromJson for DateTime<Utc> {
    fn from_json(value: &Value) -> Result<Self, String> {
        parse::time(value)
    }
}

impl FromJson for bool {
    fn from_json(value: &Value) -> Result<Self, String> {
        value.as_bool().ok_or_else(|| "must be true or false".to_string())
    }
}

/// A movie's release date: `YYYY-MM-DD`, in 1870..=2100.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReleaseDate(pub NaiveDate);

impl FromJson for ReleaseDate {
    fn from_json(value: &Value) -> Result<Self, String> {
        parse::release_date(value).map(Self)
    }
}

macro_rules! parsed_text {
    ($($(#[$doc:meta])* $ty:ty => $parse:expr;)+) => {$(
        $(#[$doc])*
        impl FromJson for $ty {
            fn from_json(value: &Value) -> Result<Self, String> {
                let parse: fn(&str) -> Result<Self, String> = $parse;
                parse(&parse::string(value)?)
            }
        }
    )+};
}

parsed_text! {
    /// 1..=200 characters.
    domain::values::Title => domain::values::Title::parse;
    /// ..=2000 characters.
    domain::values::Storyline => domain::values::Storyline::parse;
    /// 1..=100 characters.
    domain::values::CategoryName => domain::values::CategoryName::parse;
    /// `customer`, `admin`, `auditor` or `analyst`.
    crate::accounts::Role => |raw| raw.parse();
    /// A password as given (checked only against the stored hash).
    secrecy::SecretString => |raw| Ok(raw.into());
}

impl FromJson for domain::values::Rating {
    fn from_json(value: &Value) -> Result<Self, String> {
        domain::values::Rating::parse(parse::number(value)?)
    }
}

impl FromJson for domain::values::CategoryIds {
    fn from_json(value: &Value) -> Result<Self, String> {
        domain::values::CategoryIds::parse(parse::uuid_list(value)?)
    }
}

/// A director: `null` or blank is none.
impl FromJson for Option<domain::values::Director> {
    fn from_json(value: &Value) -> Result<Self, String> {
        match parse::nullable_string(value)? {
            None => Ok(None),
            Some(text) if text.trim().is_empty() => Ok(None),
            Some(text) => domain::values::Director::parse(&text).map(Some),
        }
    }
}

/// A text that an account rule accepts.
macro_rules! account_text {
    ($($(#[$doc:meta])* $name:ident($inner:ty) by $rule:path;)+) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub $inner);

        impl FromJson for $name {
            fn from_json(value: &Value) -> Result<Self, String> {
                let text = parse::string(value)?;
                $rule(&text)?;
                Ok(Self(text.into()))
            }
        }
    )+};
}

account_text! {
    /// A new account's username.
    Username(String) by crate::accounts::validate_username;
    /// A new account's email.
    Email(String) by crate::accounts::validate_email;
    /// A new password: 8..=128 characters.
    NewPassword(secrecy::SecretString) by crate::accounts::validate_password;
}

/// An amount of money that is not negative, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cents(pub i64);

impl FromJson for Cents {
    fn from_json(value: &Value) -> Result<Self, String> {
        match parse::integer(value)? {
            amount if amount < 0 => Err("must not be negative".to_string()),
            amount => Ok(Self(amount)),
        }
    }
}

/// The parsers of JSON values behind [`FromJson`], for query strings too.
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

    #[derive(Debug, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    struct Request {
        #[schema(value_type = String)]
        a: Valid<String>,
        #[schema(value_type = String)]
        b: Valid<String>,
        #[serde(default, deserialize_with = "present")]
        #[schema(value_type = Option<String>)]
        c: Option<Valid<ReleaseDate>>,
    }

    fn problems(body: Value) -> FieldErrors {
        match super::body::<Request>(body.as_object().unwrap().clone()) {
            Err(ApiError::Validation(errors)) => errors,
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn every_missing_invalid_and_unknown_field_is_reported_at_once() {
        let errors = problems(json!({"b": 5, "c": "1999-02-30", "x": 1}));
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["a", "b", "c", "x"]);
        assert_eq!(errors["a"], ["is required"]);
        assert_eq!(errors["b"], ["must be a string"]);
        assert_eq!(errors["c"], ["must be a date YYYY-MM-DD"]);
        assert_eq!(errors["x"], ["is not a known field"]);
        assert_eq!(problems(json!({"a": null, "b": "x"})).keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn optional_fields_may_be_absent_but_not_invalid_or_null() {
        let request =
            super::body::<Request>(json!({"a": "x", "b": "y"}).as_object().unwrap().clone()).unwrap();
        assert_eq!((request.a.0.as_str(), request.b.0.as_str(), request.c), ("x", "y", None));
        let given = json!({"a": "x", "b": "y", "c": "2026-02-28"});
        let request = super::body::<Request>(given.as_object().unwrap().clone()).unwrap();
        assert_eq!(request.c.map(|c| c.0 .0.to_string()).as_deref(), Some("2026-02-28"));
        assert_eq!(problems(json!({"a": "x", "b": "y", "c": null})).keys().collect::<Vec<_>>(), ["c"]);
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
}
