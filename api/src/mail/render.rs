//! Rendering an email from its templates: `templates/mail/KIND/{subject.txt,body.txt,body.html}`
//! beside this crate, the HTML parts extending `templates/mail/layout.html`. The files are built
//! into the binary, so a deployment carries no template folder. HTML templates escape every value
//! (minijinja's auto-escaping by file name); the text parts and the subject are plain text.

use chrono::{DateTime, Utc};
use minijinja::Environment;
use serde::Serialize;

/// The templates, by name, as minijinja sees them.
const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("../../templates/mail/layout.html")),
    ("welcome/subject.txt", include_str!("../../templates/mail/welcome/subject.txt")),
    ("welcome/body.txt", include_str!("../../templates/mail/welcome/body.txt")),
    ("welcome/body.html", include_str!("../../templates/mail/welcome/body.html")),
    ("rental_receipt/subject.txt", include_str!("../../templates/mail/rental_receipt/subject.txt")),
    ("rental_receipt/body.txt", include_str!("../../templates/mail/rental_receipt/body.txt")),
    ("rental_receipt/body.html", include_str!("../../templates/mail/rental_receipt/body.html")),
    ("return_receipt/subject.txt", include_str!("../../templates/mail/return_receipt/subject.txt")),
    ("return_receipt/body.txt", include_str!("../../templates/mail/return_receipt/body.txt")),
    ("return_receipt/body.html", include_str!("../../templates/mail/return_receipt/body.html")),
    ("payment_receipt/subject.txt", include_str!("../../templates/mail/payment_receipt/subject.txt")),
    ("payment_receipt/body.txt", include_str!("../../templates/mail/payment_receipt/body.txt")),
    ("payment_receipt/body.html", include_str!("../../templates/mail/payment_receipt/body.html")),
    ("overdue_reminder/subject.txt", include_str!("../../templates/mail/overdue_reminder/subject.txt")),
    ("overdue_reminder/body.txt", include_str!("../../templates/mail/overdue_reminder/body.txt")),
    ("overdue_reminder/body.html", include_str!("../../templates/mail/overdue_reminder/body.html")),
    ("password_reset/subject.txt", include_str!("../../templates/mail/password_reset/subject.txt")),
    ("password_reset/body.txt", include_str!("../../templates/mail/password_reset/body.txt")),
    ("password_reset/body.html", include_str!("../../templates/mail/password_reset/body.html")),
];

/// An email's three parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part.
    pub html: String,
}

/// The templates, parsed once.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

impl Templates {
    /// Parses every template (a syntax error is a bug of the build, caught by the tests).
    pub fn new() -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)?;
        }
        Ok(Self { env })
    }

    /// Renders the email of `kind` with `context`.
    pub fn render(&self, kind: &str, context: &impl Serialize) -> Result<Rendered, minijinja::Error> {
        let part = |name: &str| self.env.get_template(&format!("{kind}/{name}"))?.render(context);
        let subject = part("subject.txt")?;
        Ok(Rendered {
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: part("body.txt")?,
            html: part("body.html")?,
        })
    }
}

/// An amount as a person reads it: `€3.50`, `$12.00`, `£0.50`; other currencies as `3.50 CHF`.
pub fn money(amount_cents: i64, currency: &str) -> String {
    let sign = if amount_cents < 0 { "-" } else { "" };
    let cents = amount_cents.unsigned_abs();
    let number = format!("{}.{:02}", cents / 100, cents % 100);
    match currency {
        "EUR" => format!("{sign}€{number}"),
        "USD" => format!("{sign}${number}"),
        "GBP" => format!("{sign}£{number}"),
        other => format!("{sign}{number} {other}"),
    }
}

/// A time in plain words: `Thursday 10 December 2026 at 15:04 UTC`.
pub fn when(at: DateTime<Utc>) -> String {
    at.format("%A %-d %B %Y at %H:%M UTC").to_string()
}

/// A date in plain words: `10 December 2026`.
pub fn day(at: DateTime<Utc>) -> String {
    at.format("%-d %B %Y").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn context(title: &str) -> serde_json::Value {
        json!({
            "store": "Movie Store", "username": "dora", "title": title,
            "rented_at": "Monday 1 December 2026 at 10:00 UTC", "due_at": "Monday 8 December 2026 at 10:00 UTC",
            "due_date": "8 December 2026", "returned_at": "Tuesday 2 December 2026 at 10:00 UTC",
            "paid_at": "Tuesday 2 December 2026 at 11:00 UTC", "days": 4, "amount": "€3.50",
            "charge": "€6.50", "number": 2, "link": "https://shop.example/reset-password?token=a&b", "token": "a&b",
        })
    }

    #[test]
    fn money_reads_as_a_price() {
        assert_eq!(money(350, "EUR"), "€3.50");
        assert_eq!(money(100, "EUR"), "€1.00");
        assert_eq!(money(5, "EUR"), "€0.05");
        assert_eq!(money(0, "EUR"), "€0.00");
        assert_eq!(money(1650, "EUR"), "€16.50");
        assert_eq!(money(123_456, "USD"), "$1234.56");
        assert_eq!(money(50, "GBP"), "£0.50");
        assert_eq!(money(350, "CHF"), "3.50 CHF");
        assert_eq!(money(-350, "EUR"), "-€3.50");
    }

    #[test]
    fn dates_read_in_plain_words() {
        let at = Utc.with_ymd_and_hms(2026, 12, 10, 15, 4, 0).unwrap();
        assert_eq!(when(at), "Thursday 10 December 2026 at 15:04 UTC");
        assert_eq!(day(at), "10 December 2026");
    }

    #[test]
    fn every_kind_renders_three_parts_with_its_facts() {
        let templates = Templates::new().unwrap();
        for kind in projections::notifications::kind::ALL {
            let rendered = templates.render(kind, &context("Fargo")).unwrap();
            assert!(!rendered.subject.is_empty() && !rendered.subject.contains('\n'), "{kind}");
            assert!(rendered.text.contains("dora"), "{kind}: {}", rendered.text);
            assert!(rendered.html.contains("dora") && rendered.html.contains("<html"), "{kind}");
            assert!(!rendered.text.contains('<'), "{kind}: the text part is plain text");
        }
        let receipt = templates.render("return_receipt", &context("Fargo")).unwrap();
        assert_eq!(receipt.subject, "You returned Fargo: €3.50 due");
        assert!(receipt.text.contains("after 4 days") && receipt.text.contains("The charge is €3.50."));
        let reminder = templates.render("overdue_reminder", &context("Fargo")).unwrap();
        assert_eq!(reminder.subject, "Reminder 2: Fargo was due back on 8 December 2026");
        assert!(reminder.text.contains("€6.50"));
    }

    #[test]
    fn html_escapes_every_value_and_text_keeps_it() {
        let templates = Templates::new().unwrap();
        let title = "<script>alert(1)</script>";
        for kind in ["rental_receipt", "return_receipt", "payment_receipt", "overdue_reminder"] {
            let rendered = templates.render(kind, &context(title)).unwrap();
            assert!(!rendered.html.contains("<script>"), "{kind}: {}", rendered.html);
            assert!(
                rendered.html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
                "{kind}: {}",
                rendered.html
            );
            assert!(rendered.text.contains(title), "{kind}: the text part shows the title as it is");
        }
        let reset = templates.render("password_reset", &context("x")).unwrap();
        assert!(reset.html.contains("token=a&amp;b") && !reset.html.contains("token=a&b"), "{}", reset.html);
        assert!(reset.text.contains("https://shop.example/reset-password?token=a&b"));
    }

    #[test]
    fn a_missing_value_is_an_error_not_a_blank() {
        let templates = Templates::new().unwrap();
        assert!(templates.render("rental_receipt", &json!({"store": "Movie Store"})).is_err());
    }
}
