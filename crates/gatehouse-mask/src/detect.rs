//! Value detectors. One combined regular expression finds candidates in a single pass over the
//! text; each candidate is then confirmed by its own rule (Luhn, IBAN checksum, SSN ranges, a
//! real IP address parse), which keeps false positives down without slowing the common case of
//! text with nothing sensitive in it.

use regex::Regex;

/// A kind of sensitive value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// 13-19 digits, optionally grouped by spaces or dashes, passing the Luhn check.
    PaymentCard,
    /// `AAA-GG-SSSS` with a valid area, group and serial.
    UsSsn,
    Email,
    /// International (`+` and 8-15 digits) or North American (`(555) 123-4567`) numbers.
    Phone,
    /// Country code, check digits and account, passing the mod-97 check.
    Iban,
    Ipv4,
    Ipv6,
    /// `AKIA...`/`ASIA...` access key ids.
    AwsAccessKey,
    /// PEM private-key blocks (to the end of the value when unterminated).
    PrivateKey,
    /// Signed JWTs (`eyJ...`), such as tokens copied into a table.
    Jwt,
    /// Common API-key formats: GitHub, Slack, Stripe, Google, OpenAI/Anthropic-style `sk-`,
    /// and Gatehouse's own service-account tokens.
    ApiKey,
}

impl Detector {
    pub const ALL: [Detector; 11] = [
        Detector::PrivateKey,
        Detector::Jwt,
        Detector::ApiKey,
        Detector::AwsAccessKey,
        Detector::Email,
        Detector::Iban,
        Detector::PaymentCard,
        Detector::UsSsn,
        Detector::Phone,
        Detector::Ipv6,
        Detector::Ipv4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Detector::PaymentCard => "payment_card",
            Detector::UsSsn => "us_ssn",
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::Iban => "iban",
            Detector::Ipv4 => "ipv4",
            Detector::Ipv6 => "ipv6",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::PrivateKey => "private_key",
            Detector::Jwt => "jwt",
            Detector::ApiKey => "api_key",
        }
    }

    /// The candidate pattern. Order in the combined expression matters (leftmost-first):
    /// longer, more specific shapes come first.
    fn pattern(self) -> &'static str {
        match self {
            Detector::PrivateKey => {
                r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)"
            }
            Detector::Jwt => r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
            Detector::ApiKey => {
                r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,}|xox[abposr]-[A-Za-z0-9-]{10,}|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_-]{35}|sk-[A-Za-z0-9_-]{20,}|gatehouse_sa_[A-Za-z0-9]{38})"
            }
            Detector::AwsAccessKey => {
                r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"
            }
            Detector::Email => r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
            Detector::Iban => r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
            Detector::PaymentCard => r"\b(?:[0-9][ -]?){12,18}[0-9]\b",
            Detector::UsSsn => r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
            Detector::Phone => r"(?:\+[0-9]{8,15}\b|\(?\b[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4}\b)",
            // Eight groups, or a `::` compression: clock times such as 10:05:00 are neither.
            Detector::Ipv6 => {
                r"(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{0,4}::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{0,4})(?:%[0-9A-Za-z]+)?"
            }
            Detector::Ipv4 => {
                r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\b"
            }
        }
    }

    /// Confirms a candidate; returns the length of the confirmed value (which may be a
    /// prefix of the candidate: a card number directly followed by more digit groups).
    fn confirm(self, candidate: &str) -> Option<usize> {
        let whole = |ok: bool| ok.then_some(candidate.len());
        match self {
            Detector::PaymentCard => card_prefix(candidate),
            Detector::UsSsn => whole(ssn_ok(candidate)),
            Detector::Iban => whole(iban_ok(candidate)),
            Detector::Ipv6 => {
                let addr = candidate.split('%').next().unwrap_or(candidate);
                whole(
                    (addr.contains("::") || addr.matches(':').count() == 7)
                        && addr.parse::<std::net::Ipv6Addr>().is_ok(),
                )
            }
            _ => Some(candidate.len()),
        }
    }
}

/// A confirmed value in a text.
pub struct Found {
    pub detector: Detector,
    pub start: usize,
    pub end: usize,
}

/// Finds the values of a set of detectors in one pass.
pub struct Scanner {
    combined: Option<Regex>,
    /// Each detector with its own expression, in the order of `combined`'s alternatives; used
    /// only to tell which alternative a match of `combined` came from.
    groups: Vec<(Detector, Regex)>,
}

impl Scanner {
    pub fn new(detectors: &[Detector]) -> Scanner {
        let chosen: Vec<Detector> = Detector::ALL
            .iter()
            .copied()
            .filter(|d| detectors.contains(d))
            .collect();
        if chosen.is_empty() {
            return Scanner {
                combined: None,
                groups: Vec::new(),
            };
        }
        // Without capture groups the combined expression runs on the fast DFA engines.
        let pattern = chosen
            .iter()
            .map(|d| format!("(?:{})", d.pattern()))
            .collect::<Vec<_>>()
            .join("|");
        // The patterns are constants covered by tests; a failure here is a programming error.
        let combined = Regex::new(&pattern).ok();
        let groups = chosen
            .iter()
            .filter_map(|d| Some((*d, Regex::new(d.pattern()).ok()?)))
            .collect();
        Scanner { combined, groups }
    }

    /// Confirmed values in `text`, left to right, not overlapping. A candidate that fails its
    /// confirmation does not hide what follows: the search resumes one character later.
    pub fn find<'a>(&'a self, text: &'a str) -> impl Iterator<Item = Found> + 'a {
        let mut at = 0;
        std::iter::from_fn(move || {
            let re = self.combined.as_ref()?;
            loop {
                if at > text.len() {
                    return None;
                }
                let m = re.find_at(text, at)?;
                // Which alternative matched: the first whose own expression matches the same
                // span (leftmost-first, like the combined one). Only matches pay for this.
                let detector = self
                    .groups
                    .iter()
                    .find(|(_, own)| {
                        own.find_at(&text[..m.end()], m.start())
                            .is_some_and(|o| o.start() == m.start() && o.end() == m.end())
                    })
                    .map(|(d, _)| *d);
                let Some(detector) = detector else {
                    at = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
                    continue;
                };
                match detector.confirm(m.as_str()) {
                    Some(len) if len > 0 => {
                        at = m.start() + len;
                        return Some(Found {
                            detector,
                            start: m.start(),
                            end: m.start() + len,
                        });
                    }
                    _ => {
                        // Next character boundary after the candidate's start.
                        at = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
                    }
                }
            }
        })
    }
}

/// The longest prefix of `candidate` that is a card number: 13-19 digits passing Luhn and
/// ending where a digit group ends.
fn card_prefix(candidate: &str) -> Option<usize> {
    let bytes = candidate.as_bytes();
    let mut best = None;
    let mut digits = 0;
    for (i, b) in bytes.iter().enumerate() {
        if !b.is_ascii_digit() {
            continue;
        }
        digits += 1;
        let group_ends = bytes.get(i + 1).is_none_or(|n| !n.is_ascii_digit());
        if (13..=19).contains(&digits) && group_ends && luhn_ok(&candidate[..=i]) {
            best = Some(i + 1);
        }
    }
    best
}

/// The Luhn checksum over the digits of `s`.
pub fn luhn_ok(s: &str) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for b in s.bytes().rev().filter(u8::is_ascii_digit) {
        let mut d = u32::from(b - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum.is_multiple_of(10)
}

fn ssn_ok(s: &str) -> bool {
    let mut parts = s.split('-');
    let (Some(a), Some(g), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(a), Ok(g), Ok(n)) = (a.parse::<u32>(), g.parse::<u32>(), n.parse::<u32>()) else {
        return false;
    };
    a != 0 && a != 666 && a < 900 && g != 0 && n != 0
}

/// ISO 13616: move the first four characters to the end, letters to numbers, mod 97 == 1.
fn iban_ok(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let mut rem = 0u32;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(d: Detector, text: &str) -> Vec<String> {
        Scanner::new(&[d])
            .find(text)
            .map(|f| text[f.start..f.end].to_string())
            .collect()
    }

    #[test]
    fn true_and_false_positives() {
        let cases: &[(Detector, &str, bool)] = &[
            (Detector::PaymentCard, "4111 1111 1111 1111", true),
            (Detector::PaymentCard, "5500-0000-0000-0004", true),
            (Detector::PaymentCard, "4111 1111 1111 1112", false), // bad Luhn
            (Detector::PaymentCard, "order 12345", false),
            (Detector::UsSsn, "123-45-6789", true),
            (Detector::UsSsn, "000-45-6789", false),
            (Detector::UsSsn, "666-45-6789", false),
            (Detector::UsSsn, "123-00-6789", false),
            (Detector::UsSsn, "2024-01-15", false),
            (Detector::Email, "write to ada.l@example.co.uk now", true),
            (Detector::Email, "user@localhost", false),
            (Detector::Phone, "+4915112345678", true),
            (Detector::Phone, "(555) 123-4567", true),
            (Detector::Phone, "version 1.2.3", false),
            (Detector::Iban, "DE89 3704 0044 0532 0130 00", true),
            (Detector::Iban, "GB82WEST12345698765432", true),
            (Detector::Iban, "DE89 3704 0044 0532 0130 01", false), // bad checksum
            (Detector::Ipv4, "from 192.168.10.1 at", true),
            (Detector::Ipv4, "300.1.1.1", false),
            (Detector::Ipv6, "addr 2001:db8::8a2e:370:7334 x", true),
            (Detector::Ipv6, "fe80::1", true),
            (Detector::Ipv6, "at 12:30:45", false),
            (Detector::AwsAccessKey, "AKIAIOSFODNN7EXAMPLE", true),
            (Detector::AwsAccessKey, "AKIA-not-a-key", false),
            (
                Detector::PrivateKey,
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
                true,
            ),
            (
                Detector::PrivateKey,
                "-----BEGIN PRIVATE KEY-----\nMIIE (cut)",
                true,
            ),
            (Detector::PrivateKey, "-----BEGIN PUBLIC KEY-----", false),
            (
                Detector::Jwt,
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature",
                true,
            ),
            (Detector::Jwt, "eyJust text", false),
            (
                Detector::ApiKey,
                "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
                true,
            ),
            (Detector::ApiKey, "sk_live_0123456789abcdefABCD", true),
            (
                Detector::ApiKey,
                "gatehouse_sa_0123456789abcdefghijklmnopqrstuvwxyzAB",
                true,
            ),
            (Detector::ApiKey, "sk-short", false),
        ];
        for (d, text, expected) in cases {
            assert_eq!(
                !found(*d, text).is_empty(),
                *expected,
                "{} on {text:?}: {:?}",
                d.name(),
                found(*d, text)
            );
        }
    }

    #[test]
    fn the_combined_scanner_compiles_with_every_detector() {
        let s = Scanner::new(&Detector::ALL);
        assert!(s.combined.is_some());
        let text = "a@b.io 4111111111111111 123-45-6789 10.0.0.1";
        let kinds: Vec<Detector> = s.find(text).map(|f| f.detector).collect();
        assert_eq!(
            kinds,
            vec![
                Detector::Email,
                Detector::PaymentCard,
                Detector::UsSsn,
                Detector::Ipv4
            ]
        );
    }
}
