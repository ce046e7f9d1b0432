//! The one normaliser of a person's email and phone: what the lead event's `contact` says,
//! what the lookup keys of `forget --email/--phone` are made of, and what a hashed `em`/`ph`
//! sent to Meta would be (docs/leads-out.md, "Contact").
//!
//! Phones are read by `phonenumber` (a port of Google's libphonenumber) with the form's
//! country as the default region, so `555-123-4567` on a US form, `+1 (555) 123-4567` and
//! `15551234567` are one person. A number the library cannot read as a valid number for
//! that region is not guessed at: it is kept as given and flagged.

use unicode_normalization::UnicodeNormalization;

/// A country whose national phone format is assumed for numbers written without `+`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region(phonenumber::country::Id);

impl Region {
    /// An ISO 3166-1 alpha-2 code (`US`, `br`); `None` when it names no country.
    pub fn parse(code: &str) -> Option<Self> {
        let code = code.trim().to_ascii_uppercase();
        if code.len() != 2 {
            return None;
        }
        code.parse::<phonenumber::country::Id>().ok().map(Self)
    }

    /// The country of a form's locale (`en_US` → US, `pt_BR` → BR). `es_LA` ("Latin
    /// America") and the like name no country: `None`.
    pub fn from_locale(locale: &str) -> Option<Self> {
        let (_, country) = locale.trim().split_once(['_', '-'])?;
        if country.eq_ignore_ascii_case("LA") {
            return None;
        }
        Self::parse(country)
    }

    /// The two-letter code.
    pub fn code(self) -> String {
        format!("{:?}", self.0)
    }
}

/// Loads the phone-number metadata now (about 56 ms of deserialising on a laptop core,
/// BENCHMARKS.md) so the first lead of a process does not wait for it: the functions and
/// `serve` call it while they start.
pub fn prepare() {
    let _ = phonenumber::metadata::DATABASE.by_id("US");
}

/// What reading a phone answer gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phone {
    /// A valid number, in E.164 (`+15551234567`).
    E164(String),
    /// Not readable as a valid number: the answer as given (trimmed), flagged.
    AsGiven(String),
}

impl Phone {
    /// The E.164 form, when the number was read.
    pub fn e164(&self) -> Option<&str> {
        match self {
            Self::E164(number) => Some(number),
            Self::AsGiven(_) => None,
        }
    }
}

/// Reads a phone answer: E.164 when it is a valid number (written with `+` and a country
/// code, or in `region`'s national format); otherwise kept as given. `None` when blank.
pub fn normalise_phone(answer: &str, region: Option<Region>) -> Option<Phone> {
    let trimmed = answer.trim();
    if trimmed.is_empty() {
        return None;
    }
    // What no phone number looks like is not handed to the parser: it is an answer from
    // anyone, and the library has asserted on national numbers too long for it.
    let digits = trimmed.chars().filter(char::is_ascii_digit).count();
    if trimmed.len() > MAX_PHONE_CHARS || digits > MAX_PHONE_DIGITS {
        return Some(Phone::AsGiven(trimmed.to_owned()));
    }
    // libphonenumber reads "00" and "011" international prefixes only with a region; a
    // bare `+` number needs none.
    let parsed = phonenumber::parse(region.map(|r| r.0), trimmed)
        .ok()
        .filter(|number| phonenumber::is_valid(number) || has_possible_length(number))
        .map(|number| number.format().mode(phonenumber::Mode::E164).to_string())
        .filter(|e164| is_e164(e164));
    Some(match parsed {
        Some(number) => Phone::E164(number),
        None => Phone::AsGiven(trimmed.to_owned()),
    })
}

/// The longest answer handed to the phone parser, in bytes.
const MAX_PHONE_CHARS: usize = 40;
/// The most digits a number written with an international prefix (`011` or `00`) and 15
/// E.164 digits has.
const MAX_PHONE_DIGITS: usize = 18;

/// `+`, then 7 to 15 digits, the first not 0 (ITU-T E.164).
fn is_e164(text: &str) -> bool {
    text.strip_prefix('+').is_some_and(|digits| {
        (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// Whether the number has as many digits as the country's numbers have. Fictional and
/// not-yet-assigned ranges (`+1 555 …`, which Meta's own test leads use) are not valid by the
/// numbering plan, yet they are what the person typed and what a CRM must match on: a number
/// of the right length for its country is read, one of the wrong length is not.
fn has_possible_length(number: &phonenumber::PhoneNumber) -> bool {
    let digits =
        number.national().value().to_string().len() + usize::from(number.national().zeros());
    let Ok(len) = u16::try_from(digits) else {
        return false;
    };
    let Some(countries) = phonenumber::metadata::DATABASE.by_code(&number.code().value()) else {
        return false;
    };
    countries.iter().any(|meta| {
        let d = meta.descriptors();
        std::iter::once(Some(d.general()))
            .chain([
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.voip(),
                d.personal_number(),
            ])
            .flatten()
            .any(|descriptor| descriptor.possible_length().contains(&len))
    })
}

/// The rule lookup keys were made with before phones were read by region (digits only, a
/// leading `+` kept): `forget --phone` also looks under it, so no older lead is missed.
pub fn legacy_phone_digits(phone: &str) -> Option<String> {
    let trimmed = phone.trim();
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    Some(if trimmed.starts_with('+') {
        format!("+{digits}")
    } else {
        digits
    })
}

/// One address, one form, whoever typed it and however it was stored: trimmed; Unicode
/// NFC (a decomposed `jose\u{301}` is the composed `josé`); the local part lower-cased
/// with Unicode's default mapping after the dotted capital `İ` is taken as `i` (so
/// `İlker` is `ilker`, not `i̇lker`); the domain through IDNA (UTS 46) to its ASCII
/// form (`bücher.de` and `xn--bcher-kva.de` are one domain, lower-case). A domain IDNA
/// refuses is kept lower-cased as it is. `None` when nothing is left. ASCII addresses are
/// only trimmed and lower-cased, as Meta's own rule for a hashed `em`.
pub fn normalise_email(email: &str) -> Option<String> {
    let composed: String = email.trim().nfc().collect();
    if composed.is_empty() {
        return None;
    }
    let lower =
        |text: &str| -> String { text.replace('\u{130}', "i").to_lowercase().nfc().collect() };
    Some(match composed.rsplit_once('@') {
        Some((local, domain)) => {
            let domain = idna::domain_to_ascii(domain).unwrap_or_else(|_| lower(domain));
            format!("{}@{domain}", lower(local))
        }
        None => lower(&composed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(code: &str) -> Option<Region> {
        Region::parse(code)
    }

    #[test]
    fn phones_written_the_ways_people_write_them() {
        // (answer, form's country, E.164 or None when it must be kept as given)
        let table: &[(&str, &str, Option<&str>)] = &[
            // United States: with and without the country code, brackets, dots, spaces.
            ("+1 (212) 555-0123", "US", Some("+12125550123")),
            ("12125550123", "US", Some("+12125550123")),
            ("212-555-0123", "US", Some("+12125550123")),
            ("(212) 555.0123", "US", Some("+12125550123")),
            (" 212 555 0123 ", "US", Some("+12125550123")),
            ("001 212 555 0123", "DE", Some("+12125550123")),
            // Brazil: mobile with the 9, area code in brackets, the trunk 0.
            ("(11) 91234-5678", "BR", Some("+5511912345678")),
            ("+55 11 91234 5678", "BR", Some("+5511912345678")),
            ("011 91234-5678", "BR", Some("+5511912345678")),
            // United Kingdom: the leading 0 of the national form.
            ("07700 900123", "GB", Some("+447700900123")),
            ("+44 7700 900123", "US", Some("+447700900123")),
            // Germany and India.
            ("030 12345678", "DE", Some("+493012345678")),
            ("+91 98765 43210", "IN", Some("+919876543210")),
            ("098765 43210", "IN", Some("+919876543210")),
            // Not numbers, or not valid ones: kept as given.
            // The fictional 555 range: the right length, so read (Meta's test leads use it).
            ("+1 (555) 123-4567", "US", Some("+15551234567")),
            ("15551234567", "US", Some("+15551234567")),
            ("555-123-4567", "US", Some("+15551234567")),
            // Not numbers, or not of a length the country has: kept as given.
            ("555-0101", "US", None),
            ("n/a", "US", None),
            ("123", "BR", None),
            ("+1 212 555 01234", "US", None),
            ("+999 1234", "US", None),
        ];
        for (answer, country, want) in table {
            let got = normalise_phone(answer, region(country));
            match want {
                Some(e164) => assert_eq!(
                    got,
                    Some(Phone::E164((*e164).to_owned())),
                    "{answer} on a {country} form"
                ),
                None => assert_eq!(
                    got,
                    Some(Phone::AsGiven(answer.trim().to_owned())),
                    "{answer} on a {country} form is kept as given"
                ),
            }
        }
        assert_eq!(normalise_phone("   ", region("US")), None);
    }

    #[test]
    fn odd_answers_are_kept_as_given_never_a_panic_or_an_overlong_number() {
        for odd in [
            "9".repeat(17).as_str(),
            "9".repeat(60).as_str(),
            "+4930123456789012345",
            "+49 30 1234567890123",
            "0049 30 123456789012",
            "+",
            "++1 212 555 0123",
            "(((((",
            "+1 212 555 0123 ext. 99999999999999999999",
            "٠١٢٣٤٥٦٧٨٩",
            "📞 212 555 0123",
            "+0 123 456 789",
        ] {
            for region in [None, Region::parse("DE"), Region::parse("US")] {
                if let Some(Phone::E164(number)) = normalise_phone(odd, region) {
                    assert!(is_e164(&number), "{odd:?} gave {number}");
                }
            }
        }
        assert!(is_e164("+12125550123"));
        assert!(
            !is_e164("+4930123456789012"),
            "16 digits is no E.164 number"
        );
    }

    #[test]
    fn without_a_region_only_international_numbers_are_read() {
        assert_eq!(
            normalise_phone("+55 (11) 91234-5678", None),
            Some(Phone::E164("+5511912345678".into()))
        );
        assert_eq!(
            normalise_phone("212-555-0123", None),
            Some(Phone::AsGiven("212-555-0123".into()))
        );
    }

    #[test]
    fn a_locale_names_its_country() {
        assert_eq!(
            Region::from_locale("en_US").map(Region::code).as_deref(),
            Some("US")
        );
        assert_eq!(
            Region::from_locale("pt_BR").map(Region::code).as_deref(),
            Some("BR")
        );
        assert_eq!(
            Region::from_locale("es_LA"),
            None,
            "Latin America is no country"
        );
        assert_eq!(Region::from_locale("en"), None);
        assert_eq!(Region::parse("zz"), None);
        assert_eq!(Region::parse("USA"), None);
    }

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        for (given, want) in [
            ("  Ada@Example.ORG ", "ada@example.org"),
            ("GRACE.HOPPER+leads@Navy.mil", "grace.hopper+leads@navy.mil"),
            ("jose\u{301}@example.org", "jos\u{e9}@example.org"),
            ("ADA@B\u{dc}CHER.DE", "ada@xn--bcher-kva.de"),
            ("\u{130}lker@example.org", "ilker@example.org"),
            ("not an address", "not an address"),
        ] {
            assert_eq!(normalise_email(given).as_deref(), Some(want), "{given}");
        }
        assert_eq!(normalise_email(" \t"), None);
    }
}
