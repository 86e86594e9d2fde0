//! `Range` request headers (RFC 9110 §14.1.2), for file downloads.
//!
//! Only one `bytes=` range is served; anything else (other units, several ranges, syntax we do
//! not understand) is ignored, which the RFC allows: the answer is then the whole file. Every
//! number comes from the client, so nothing here may overflow: values too large for a `u64`
//! saturate (they are past any file anyway) and the end is clamped to the last byte.

/// What a `Range` header asks for, against a file of a known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The whole file (no header, or one we do not serve partially).
    All,
    /// Bytes `start..=end` (inclusive, as `Content-Range` writes them); always
    /// `start <= end < len`.
    Satisfiable {
        /// First byte.
        start: u64,
        /// Last byte.
        end: u64,
    },
    /// Nothing of the file can be served (416).
    Unsatisfiable,
}

/// A run of ASCII digits as a number; `None` if empty or not all digits (`u64::from_str`
/// would accept a leading `+`, which the grammar does not). Too many digits saturate: such a
/// position is past the end of any file.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

/// Parse `header` against a file of `len` bytes.
pub fn parse_range(header: &str, len: u64) -> Wanted {
    let header = header.trim();
    // The range unit is case-insensitive.
    let Some(spec) = header
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("bytes="))
        .map(|_| &header[6..])
    else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::All;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last n bytes (all of them when n is larger than the file).
        return match digits(b) {
            None => Wanted::All,
            Some(0) => Wanted::Unsatisfiable,
            Some(_) if len == 0 => Wanted::Unsatisfiable,
            Some(n) => Wanted::Satisfiable {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        };
    }
    let Some(start) = digits(a) else {
        return Wanted::All;
    };
    let last = if b.is_empty() {
        None
    } else {
        match digits(b) {
            // A last position before the first makes the range invalid: ignore it.
            Some(last) if last >= start => Some(last),
            _ => return Wanted::All,
        }
    };
    if start >= len {
        return Wanted::Unsatisfiable;
    }
    // len > start >= 0, so len - 1 cannot underflow; an end past the file is clamped to it.
    let end = last.map_or(len - 1, |l| l.min(len - 1));
    Wanted::Satisfiable { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn part(start: u64, end: u64) -> Wanted {
        Wanted::Satisfiable { start, end }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), part(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), part(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), part(50, 99));
        assert_eq!(parse_range("BYTES=0-0", 100), part(0, 0));
        assert_eq!(parse_range("bytes=100-", 100), Wanted::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Wanted::Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Wanted::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Wanted::All);
        assert_eq!(parse_range("items=0-1", 100), Wanted::All);
        assert_eq!(parse_range("bytes=9-1", 100), Wanted::All);
        assert_eq!(parse_range("bytes=+1-5", 100), Wanted::All);
    }

    #[test]
    fn huge_ends_are_clamped_not_overflowed() {
        let max = u64::MAX;
        assert_eq!(parse_range(&format!("bytes=0-{max}"), 100), part(0, 99));
        assert_eq!(parse_range(&format!("bytes=5-{max}"), 100), part(5, 99));
        assert_eq!(
            parse_range("bytes=5-99999999999999999999999999", 100),
            part(5, 99)
        );
        assert_eq!(
            parse_range("bytes=-99999999999999999999999999", 100),
            part(0, 99)
        );
        assert_eq!(
            parse_range(&format!("bytes={max}-{max}"), 100),
            Wanted::Unsatisfiable
        );
        assert_eq!(
            parse_range(&format!("bytes={max}-"), max),
            Wanted::Unsatisfiable
        );
        assert_eq!(
            parse_range(&format!("bytes=0-{max}"), max),
            part(0, max - 1)
        );
    }

    fn check(h: &str, len: u64) {
        if let Wanted::Satisfiable { start, end } = parse_range(h, len) {
            assert!(start <= end && end < len, "{h:?} on {len}: {start}-{end}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_any_header(h in any::<String>(), len in any::<u64>()) {
            check(&h, len);
        }

        #[test]
        fn satisfiable_ranges_lie_inside_the_file(
            a in proptest::option::of(any::<u64>()),
            b in proptest::option::of(any::<u64>()),
            pad in "[ 0-9]{0,3}",
            len in prop_oneof![Just(0u64), 1u64..1000, Just(u64::MAX), any::<u64>()],
        ) {
            let fmt = |v: Option<u64>| v.map(|v| format!("{pad}{v}")).unwrap_or_default();
            check(&format!("bytes={}-{}", fmt(a), fmt(b)), len);
        }
    }
}
