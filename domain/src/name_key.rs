//! The key that names compare by: usernames, emails and category names are unique, and looked
//! up, by their [`NameKey`], never by the text as typed nor by PostgreSQL's `lower()` (which
//! depends on the database's locale, folds only ASCII in the C locale, and disagrees with Rust's
//! `to_lowercase` on the Greek final sigma and the dotted `İ`).
//!
//! The key is computed here, once, and stored beside the name, so every crate and every process
//! compares names alike. The name itself is kept as it was entered, for display.

use std::collections::HashMap;
use std::hash::Hash;

use caseless::Caseless;
use unicode_normalization::UnicodeNormalization;

/// A name's comparison key: its NFKC normal form, fully case-folded (Unicode default case
/// folding, statuses C and F, so `ß` folds to `ss`), then normalised to NFKC again, because case
/// folding may leave text that is not normalised. Close to Unicode's `NFKC_Casefold`, which also
/// drops default-ignorable characters; those are kept here.
///
/// Two names are the same name when their keys are equal: `ΝΙΚΟΣ`, `νικος` and `νικοσ`;
/// `Émile` (precomposed), `E\u{301}mile` (decomposed) and `émile`; `Straße` and `STRASSE`;
/// fullwidth `ＡＢＣ` and `abc`. Computing the key of a key gives the key back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey(String);

impl NameKey {
    /// The key of a name (any text; validating the name is the caller's business).
    pub fn of(name: &str) -> Self {
        Self(name.nfkc().default_case_fold().nfkc().collect())
    }

    /// The key as text, as it is stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which Unicode tables compute the keys. Stored keys computed with other tables are recomputed:
/// a character unassigned in older tables may normalise or fold differently in newer ones.
pub fn version() -> String {
    let (n1, n2, n3) = unicode_normalization::UNICODE_VERSION;
    let (c1, c2, c3) = caseless::UNICODE_VERSION;
    format!("nfkc-casefold-nfkc; normalization {n1}.{n2}.{n3}; case folding {c1}.{c2}.{c3}")
}

/// Two stored names that have one key: the first keeps the key, the second is left without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision<I> {
    /// The key both names have.
    pub key: NameKey,
    /// The row that keeps the key.
    pub kept_by: I,
    /// The row left without a key.
    pub left_out: I,
}

/// The keys of stored names, settled so that no two rows hold one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled<I> {
    /// Every row with the key it should hold: `None` for a row left out by a collision.
    pub keys: Vec<(I, Option<NameKey>)>,
    /// Each row left out, with the row that keeps its key.
    pub collisions: Vec<Collision<I>>,
}

impl<I: Clone> Settled<I> {
    /// The rows whose settled key is not the key they hold now (`current` tells that), each with
    /// the key to store (`None`: remove the one it holds).
    pub fn changes<'a>(&self, current: impl Fn(&I) -> Option<&'a str>) -> Vec<(I, Option<String>)> {
        self.keys
            .iter()
            .filter(|(id, key)| current(id) != key.as_ref().map(NameKey::as_str))
            .map(|(id, key)| (id.clone(), key.as_ref().map(|k| k.as_str().to_string())))
            .collect()
    }
}

/// Computes the keys of stored names given in order of precedence: the first row with a key keeps
/// it, and every later row with that key is left without one and reported. Nothing is dropped: a
/// row left out is still in `keys`, with `None`.
pub fn settle<I, S>(names: impl IntoIterator<Item = (I, S)>) -> Settled<I>
where
    I: Clone + Eq + Hash,
    S: AsRef<str>,
{
    let mut holders: HashMap<NameKey, I> = HashMap::new();
    let mut settled = Settled { keys: Vec::new(), collisions: Vec::new() };
    for (id, name) in names {
        let key = NameKey::of(name.as_ref());
        match holders.get(&key) {
            Some(holder) => {
                settled.collisions.push(Collision { key, kept_by: holder.clone(), left_out: id.clone() });
                settled.keys.push((id, None));
            }
            None => {
                holders.insert(key.clone(), id.clone());
                settled.keys.push((id, Some(key)));
            }
        }
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(a: &str, b: &str) -> bool {
        NameKey::of(a) == NameKey::of(b)
    }

    #[test]
    fn greek_capitals_and_both_sigmas_are_one_name() {
        assert!(same("ΝΙΚΟΣ", "νικος"));
        assert!(same("ΝΙΚΟΣ", "νικοσ"));
        assert!(same("νικος", "νικοσ"));
        assert_eq!(NameKey::of("ΝΙΚΟΣ").as_str(), "νικοσ");
        // What `to_lowercase` and PostgreSQL's `lower()` disagreed on.
        assert_ne!("ΝΙΚΟΣ".to_lowercase(), "νικοσ");
    }

    #[test]
    fn accents_compare_alike_composed_or_decomposed() {
        assert!(same("Émile", "émile"));
        assert!(same("\u{c9}mile", "E\u{301}mile"));
        assert!(same("e\u{301}mile", "ÉMILE"));
        assert_eq!(NameKey::of("E\u{301}mile").as_str(), "\u{e9}mile");
    }

    #[test]
    fn sharp_s_folds_to_ss() {
        assert!(same("ß", "SS"));
        assert!(same("ß", "ss"));
        assert!(same("Straße", "STRASSE"));
        assert!(same("ẞ", "ss"), "capital sharp s");
    }

    #[test]
    fn compatibility_forms_are_their_plain_letters() {
        assert!(same("ＡＢＣ", "abc"));
        assert!(same("ｄｒａｍａ", "Drama"));
        assert!(same("ﬁlm", "FILM"), "the fi ligature");
        assert!(same("ℌ", "h"));
    }

    #[test]
    fn the_dotted_capital_i_folds_alike_everywhere() {
        // Default (not Turkish) folding: `İ` is `i` with a combining dot above, in every process
        // and whatever the database's locale.
        assert_eq!(NameKey::of("İstanbul").as_str(), "i\u{307}stanbul");
        assert!(same("İstanbul", "i\u{307}stanbul"));
        assert!(same("İSTANBUL", "İstanbul"));
        assert!(!same("İstanbul", "Istanbul"));
        assert!(!same("ıstanbul", "istanbul"), "the dotless i is a letter of its own");
    }

    #[test]
    fn different_names_stay_different() {
        for (a, b) in [
            ("greg", "gregg"),
            ("émile", "emile"),
            ("νικος", "νικας"),
            ("drama", "dramas"),
            ("a.b", "a_b"),
            ("bob@example.com", "bob@example.org"),
        ] {
            assert!(!same(a, b), "{a} and {b}");
        }
    }

    #[test]
    fn the_key_of_a_key_is_the_key_for_every_character() {
        for c in (0..=0x10_ffffu32).filter_map(char::from_u32) {
            let key = NameKey::of(c.encode_utf8(&mut [0; 4]));
            assert_eq!(NameKey::of(key.as_str()), key, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn the_version_names_both_tables() {
        let version = version();
        assert!(version.starts_with("nfkc-casefold-nfkc; normalization "), "{version}");
        assert!(version.contains("; case folding "), "{version}");
    }

    #[test]
    fn the_first_of_two_alike_names_keeps_the_key() {
        let settled = settle([(1, "Émile"), (2, "greg"), (3, "émile"), (4, "E\u{301}MILE")]);
        let emile = NameKey::of("émile");
        assert_eq!(
            settled.keys,
            vec![(1, Some(emile.clone())), (2, Some(NameKey::of("greg"))), (3, None), (4, None)]
        );
        assert_eq!(
            settled.collisions,
            vec![
                Collision { key: emile.clone(), kept_by: 1, left_out: 3 },
                Collision { key: emile, kept_by: 1, left_out: 4 },
            ]
        );
    }

    proptest! {
        #[test]
        fn normal_forms_never_change_the_key(name in "\\PC{0,40}") {
            let key = NameKey::of(&name);
            prop_assert_eq!(NameKey::of(&name.nfd().collect::<String>()), key.clone());
            prop_assert_eq!(NameKey::of(&name.nfc().collect::<String>()), key.clone());
            prop_assert_eq!(NameKey::of(&name.nfkd().collect::<String>()), key.clone());
            prop_assert_eq!(NameKey::of(key.as_str()), key);
        }

        /// Over long-assigned letters (Latin to Latin Extended-B, Greek, Cyrillic): the standard
        /// library's case mappings may come from a newer Unicode than the folding tables, and
        /// letters assigned in between would differ. The dotless `ı` is left out: its capital is
        /// `I`, whose small letter is the dotted `i`.
        #[test]
        fn case_never_changes_the_key(name in "[0-9A-Za-z\u{c0}-\u{24f}\u{370}-\u{3ff}\u{400}-\u{4ff}]{0,40}") {
            prop_assume!(!name.contains('ı'));
            let key = NameKey::of(&name);
            prop_assert_eq!(NameKey::of(&name.to_uppercase()), key.clone());
            prop_assert_eq!(NameKey::of(&name.to_lowercase()), key);
        }

        #[test]
        fn settled_keys_never_repeat(names in proptest::collection::vec("[a-cA-Cß]{1,3}", 0..20)) {
            let settled = settle(names.iter().enumerate());
            let held: Vec<&NameKey> = settled.keys.iter().filter_map(|(_, key)| key.as_ref()).collect();
            let distinct: std::collections::HashSet<&NameKey> = held.iter().copied().collect();
            prop_assert_eq!(held.len(), distinct.len());
            prop_assert_eq!(settled.keys.len(), names.len());
            prop_assert_eq!(held.len() + settled.collisions.len(), names.len());
        }
    }
}
