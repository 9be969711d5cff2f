//! Value objects: each is a newtype whose only constructor checks the rule it stands for
//! ("parse, don't validate"). A parse error is a user-safe sentence naming what is wrong, which
//! the API reports against the field it came from.
//!
//! Deserialisation (of stored events) trusts its input: events were validated when they were
//! recorded, and an event, once stored, is a fact.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

fn char_len(s: &str) -> usize {
    s.chars().count()
}

fn bounded_text(raw: &str, min: usize, max: usize) -> Result<String, String> {
    let text = raw.trim();
    let len = char_len(text);
    if len < min {
        return Err(if min == 1 {
            "must not be empty".to_string()
        } else {
            format!("must be at least {min} characters")
        });
    }
    if len > max {
        return Err(format!("must be at most {max} characters"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err("must not contain control characters".to_string());
    }
    Ok(text.to_string())
}

macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Trims surrounding white space and checks the length in characters.
            pub fn parse(raw: &str) -> Result<Self, String> {
                bounded_text(raw, $min, $max).map(Self)
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_value!(
    /// A movie title: 1..=200 characters.
    Title, 1, 200
);
text_value!(
    /// A movie's storyline: 0..=2000 characters.
    Storyline, 0, 2000
);
text_value!(
    /// A director's name: 1..=200 characters (absence is `None`, not an empty name).
    Director, 1, 200
);
text_value!(
    /// A category name: 1..=100 characters, unique case-insensitively across categories.
    CategoryName, 1, 100
);

/// A rating from 0 to 10 with one decimal, held as tenths so that it compares exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rating(u8);

impl Rating {
    /// Accepts a finite number from 0 to 10 with at most one decimal.
    pub fn parse(value: f64) -> Result<Self, String> {
        if !value.is_finite() || !(0.0..=10.0).contains(&value) {
            return Err("must be a number from 0 to 10".to_string());
        }
        let tenths = (value * 10.0).round();
        if (value * 10.0 - tenths).abs() > 1e-6 {
            return Err("must have at most one decimal".to_string());
        }
        Ok(Self(tenths as u8))
    }

    /// The rating in tenths (0..=100).
    pub fn tenths(self) -> u8 {
        self.0
    }

    /// The rating as a number, e.g. `8.5`.
    pub fn value(self) -> f64 {
        f64::from(self.0) / 10.0
    }
}

impl Serialize for Rating {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.value())
    }
}

impl<'de> Deserialize<'de> for Rating {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        Rating::parse(value).map_err(serde::de::Error::custom)
    }
}

/// The categories of a movie: 1..=5 distinct category ids, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CategoryIds(Vec<Uuid>);

impl CategoryIds {
    /// The most categories one movie may have.
    pub const MAX: usize = 5;

    /// Checks the count and that no id repeats. Whether each category exists is asked of the
    /// category lookup by the caller: categories are never deleted, so the answer cannot go stale.
    pub fn parse(ids: Vec<Uuid>) -> Result<Self, String> {
        if ids.is_empty() {
            return Err("must name at least one category".to_string());
        }
        if ids.len() > Self::MAX {
            return Err(format!("must name at most {} categories", Self::MAX));
        }
        let mut seen = std::collections::HashSet::new();
        if !ids.iter().all(|id| seen.insert(*id)) {
            return Err("must not repeat a category".to_string());
        }
        Ok(Self(ids))
    }

    /// The ids.
    pub fn ids(&self) -> &[Uuid] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(Title::parse("  Heat ").unwrap().as_str(), "Heat");
        assert!(Title::parse("   ").is_err());
        assert!(Title::parse(&"x".repeat(200)).is_ok());
        assert!(Title::parse(&"x".repeat(201)).is_err());
        assert!(Title::parse("bad\u{0}title").is_err());
    }

    #[test]
    fn storyline_may_be_empty_but_not_too_long() {
        assert_eq!(Storyline::parse("").unwrap().as_str(), "");
        assert!(Storyline::parse(&"é".repeat(2000)).is_ok());
        assert!(Storyline::parse(&"é".repeat(2001)).is_err());
    }

    #[test]
    fn ratings_have_one_decimal_within_zero_to_ten() {
        assert_eq!(Rating::parse(8.5).unwrap().tenths(), 85);
        assert_eq!(Rating::parse(0.0).unwrap().tenths(), 0);
        assert_eq!(Rating::parse(10.0).unwrap().tenths(), 100);
        for bad in [-0.1, 10.1, 8.55, f64::NAN, f64::INFINITY] {
            assert!(Rating::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn category_ids_are_one_to_five_distinct() {
        let id = Uuid::now_v7();
        assert!(CategoryIds::parse(vec![]).is_err());
        assert!(CategoryIds::parse(vec![id, id]).is_err());
        assert!(CategoryIds::parse((0..6).map(|_| Uuid::now_v7()).collect()).is_err());
        assert_eq!(CategoryIds::parse(vec![id]).unwrap().ids(), &[id]);
    }

    proptest! {
        #[test]
        fn every_tenth_round_trips_through_json(tenths in 0u8..=100) {
            let rating = Rating::parse(f64::from(tenths) / 10.0).unwrap();
            prop_assert_eq!(rating.tenths(), tenths);
            let json = serde_json::to_string(&rating).unwrap();
            let back: Rating = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, rating);
        }

        #[test]
        fn a_parsed_title_is_trimmed_and_within_bounds(raw in "\\PC{0,260}") {
            if let Ok(title) = Title::parse(&raw) {
                let len = title.as_str().chars().count();
                prop_assert!((1..=200).contains(&len));
                prop_assert_eq!(title.as_str(), raw.trim());
            }
        }
    }
}
