//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1G`, `1e3`, `.5`)
//! turned into integers that can be added up and compared: millicores for
//! cpu, bytes for memory, plain counts for pods (apimachinery's
//! `resource.Quantity`, its `MilliValue()` and `Value()`).
//!
//! The grammar is apimachinery's: an optionally signed decimal number
//! followed by a binary suffix (`Ki` .. `Ei`), a decimal suffix (`n`, `u`,
//! `m`, none, `k`, `M`, `G`, `T`, `P`, `E`) or a decimal exponent (`e3`,
//! `E-2`). Values are rounded up, as `Quantity.MilliValue()` / `Value()`
//! do, and saturate at `i64::MAX` instead of overflowing.

use std::fmt;

/// A string that is not a quantity, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError {
    pub quantity: String,
    pub reason: &'static str,
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid quantity {:?}: {}", self.quantity, self.reason)
    }
}

impl std::error::Error for QuantityError {}

/// A parsed quantity: `sign * mantissa * 10^exp10 * 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

fn parse(s: &str) -> Result<Parsed, QuantityError> {
    let err = |reason| QuantityError {
        quantity: s.to_string(),
        reason,
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(err("empty"));
    }
    let bytes = t.as_bytes();
    let mut i = 0;
    let mut negative = false;
    if bytes[0] == b'+' || bytes[0] == b'-' {
        negative = bytes[0] == b'-';
        i = 1;
    }
    let mut mantissa: u128 = 0;
    let mut exp10: i32 = 0;
    let mut digits = 0usize;
    let mut seen_dot = false;
    while i < bytes.len() {
        match bytes[i] {
            b'0'..=b'9' => {
                digits += 1;
                // Beyond 30 significant digits the extra precision cannot
                // matter for an i64 result: drop the digit, keep the scale.
                if mantissa < 10u128.pow(30) {
                    mantissa = mantissa * 10 + u128::from(bytes[i] - b'0');
                    if seen_dot {
                        exp10 -= 1;
                    }
                } else if !seen_dot {
                    exp10 += 1;
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            _ => break,
        }
        i += 1;
    }
    if digits == 0 {
        return Err(err("no digits"));
    }
    let suffix = &t[i..];
    let (e10, e2) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let rest = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or_else(|| err("unknown suffix"))?;
            let unsigned = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("bad exponent"));
            }
            let e: i32 = rest.parse().map_err(|_| err("exponent out of range"))?;
            (e, 0)
        }
    };
    // Trailing fraction zeros carry no value: dropping them keeps the
    // products below small (`1.000Ei` is `1Ei`).
    while mantissa != 0 && mantissa.is_multiple_of(10) && exp10 < 0 {
        mantissa /= 10;
        exp10 += 1;
    }
    Ok(Parsed {
        negative,
        mantissa,
        exp10: exp10.saturating_add(e10),
        exp2: e2,
    })
}

/// `ceil(|q| * 10^scale)` for a parsed quantity, saturating at `i64::MAX`.
fn scaled(p: Parsed, scale: i32) -> i64 {
    if p.mantissa == 0 {
        return 0;
    }
    let e10 = p.exp10.saturating_add(scale);
    let magnitude: u128 = if e10 >= 0 {
        let mut v = p.mantissa;
        for _ in 0..e10 {
            match v.checked_mul(10) {
                Some(n) if n <= i64::MAX as u128 => v = n,
                _ => return sat(p.negative),
            }
        }
        match v.checked_mul(1u128 << p.exp2) {
            Some(n) => n,
            None => return sat(p.negative),
        }
    } else {
        let Some(num) = p.mantissa.checked_mul(1u128 << p.exp2) else {
            return sat(p.negative);
        };
        let mut den: u128 = 1;
        for _ in 0..e10.unsigned_abs() {
            match den.checked_mul(10) {
                Some(d) if d <= num => den = d,
                // The denominator already exceeds the numerator: 0 < v < 1.
                _ => return if p.negative { 0 } else { 1 },
            }
        }
        if p.negative {
            num / den
        } else {
            num.div_ceil(den)
        }
    };
    if magnitude > i64::MAX as u128 {
        return sat(p.negative);
    }
    let m = magnitude as i64;
    if p.negative { -m } else { m }
}

fn sat(negative: bool) -> i64 {
    if negative { i64::MIN } else { i64::MAX }
}

/// The quantity in thousandths, rounded up: cpu `"500m"` -> 500, `"2"` -> 2000.
pub fn milli_value(s: &str) -> Result<i64, QuantityError> {
    parse(s).map(|p| scaled(p, 3))
}

/// The quantity as a whole number, rounded up: memory `"128Mi"` -> 134217728.
pub fn value(s: &str) -> Result<i64, QuantityError> {
    parse(s).map(|p| scaled(p, 0))
}

/// The quantity in billionths (a `Quantity`'s precision), rounded up and
/// saturating: exact enough to compare two quantities, as `Quantity.Cmp`
/// does (`"1"` and `"1000m"` are equal).
pub fn nano_value(s: &str) -> Result<i128, QuantityError> {
    let p = parse(s)?;
    if p.mantissa == 0 {
        return Ok(0);
    }
    let saturated = if p.negative { i128::MIN } else { i128::MAX };
    let e10 = p.exp10.saturating_add(9);
    let Some(num) = p.mantissa.checked_mul(1u128 << p.exp2) else {
        return Ok(saturated);
    };
    let magnitude = if e10 >= 0 {
        let mut v = num;
        for _ in 0..e10 {
            match v.checked_mul(10) {
                Some(n) if n <= i128::MAX as u128 => v = n,
                _ => return Ok(saturated),
            }
        }
        v
    } else {
        let mut den: u128 = 1;
        for _ in 0..e10.unsigned_abs() {
            match den.checked_mul(10) {
                Some(d) if d <= num => den = d,
                // Below one billionth: rounds up to one.
                _ => return Ok(if p.negative { -1 } else { 1 }),
            }
        }
        num.div_ceil(den)
    };
    if magnitude > i128::MAX as u128 {
        return Ok(saturated);
    }
    let m = magnitude as i128;
    Ok(if p.negative { -m } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("1", 1),
            ("2", 2),
            ("128Mi", 128 << 20),
            ("1Ki", 1024),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("1Ti", 1 << 40),
            ("1Ei", 1 << 60),
            ("8Ei", i64::MAX),
            ("1k", 1000),
            ("1M", 1_000_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("10E", i64::MAX),
            ("1e3", 1000),
            ("1E3", 1000),
            ("1e+3", 1000),
            ("12e-1", 2),
            ("1.5", 2),
            (".5", 1),
            ("5.", 5),
            ("100m", 1),
            ("1n", 1),
            ("0.000", 0),
            ("+3", 3),
            ("-3", -3),
            ("-1.5", -1),
            ("  64Mi ", 64 << 20),
            ("123456789012345678901234567890123456789", i64::MAX),
            ("1e400", i64::MAX),
            ("1e-400", 1),
        ];
        for (s, want) in cases {
            assert_eq!(value(s), Ok(*want), "value({s:?})");
        }
    }

    #[test]
    fn milli_values() {
        let cases: &[(&str, i64)] = &[
            ("500m", 500),
            ("2", 2000),
            ("0.1", 100),
            ("0.0001", 1),
            ("250u", 1),
            ("1500000n", 2),
            ("1e-3", 1),
            ("1e3", 1_000_000),
            ("1k", 1_000_000),
            ("1.25", 1250),
            ("1Ki", 1_024_000),
            ("0", 0),
        ];
        for (s, want) in cases {
            assert_eq!(milli_value(s), Ok(*want), "milli_value({s:?})");
        }
    }

    /// The cases the agent's cgroup code tested its own parser with (values
    /// scaled by 1000 are millicores, by 1 are bytes).
    #[test]
    fn cgroup_cases() {
        let cases: &[(&str, u64, Option<i64>)] = &[
            ("100m", 1000, Some(100)),
            ("0.5", 1000, Some(500)),
            ("1", 1000, Some(1000)),
            ("2.25", 1000, Some(2250)),
            ("0.1", 1000, Some(100)),
            ("1.0001", 1000, Some(1001)), // rounded up like the API server
            ("64Mi", 1, Some(64 << 20)),
            ("1G", 1, Some(1_000_000_000)),
            ("1Gi", 1, Some(1 << 30)),
            ("128974848", 1, Some(128_974_848)),
            ("129e6", 1, Some(129_000_000)),
            ("123k", 1, Some(123_000)),
            ("1.5Ki", 1, Some(1536)),
            ("500u", 1000, Some(1)),
            ("", 1, None),
            ("abc", 1, None),
            ("12Xi", 1, None),
            ("1.2.3", 1, None),
        ];
        for (q, scale, want) in cases {
            let got = if *scale == 1000 {
                milli_value(q)
            } else {
                value(q)
            };
            assert_eq!(got.ok(), *want, "{q} x{scale}");
        }
    }

    /// apimachinery's quantity tests: equal values in different forms
    /// (`Quantity.Cmp` == 0), and precision rounded up to 1n.
    #[test]
    fn nano_values_compare_exactly() {
        let equal: &[(&str, &str)] = &[
            ("1", "1000m"),
            ("1k", "1000"),
            ("1Ki", "1024"),
            ("1.5Gi", "1536Mi"),
            ("1e3", "1k"),
            ("0.1", "100m"),
            ("100m", "100000u"),
            ("1M", "1000k"),
            ("0", "0m"),
            ("1Ei", "1024Pi"),
        ];
        for (a, b) in equal {
            assert_eq!(nano_value(a), nano_value(b), "{a} == {b}");
        }
        let differ: &[(&str, &str)] = &[("1n", "2n"), ("1", "1001m"), ("1Ki", "1k")];
        for (a, b) in differ {
            assert_ne!(nano_value(a), nano_value(b), "{a} != {b}");
        }
        assert_eq!(nano_value("1e-10"), Ok(1));
        assert_eq!(nano_value("-1n"), Ok(-1));
        assert_eq!(nano_value("1e400"), Ok(i128::MAX));
        assert_eq!(nano_value("1.5"), Ok(1_500_000_000));
        // Many fraction digits with a binary suffix saturate instead of overflowing.
        assert_eq!(
            value("1.00000000000000000000000000000Ei"),
            Ok(1 << 60),
            "exact"
        );
    }

    #[test]
    fn errors() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("Mi", "no digits"),
            ("-", "no digits"),
            (".", "no digits"),
            ("1KB", "unknown suffix"),
            ("1ki", "unknown suffix"),
            ("1 Mi", "unknown suffix"),
            ("1..2", "unknown suffix"),
            ("1e", "bad exponent"),
            ("1e+", "bad exponent"),
            ("1ex", "bad exponent"),
            ("1e99999999999", "exponent out of range"),
        ];
        for (s, reason) in cases {
            let e = value(s).expect_err(s);
            assert_eq!(e.reason, *reason, "{s:?}");
            assert!(e.to_string().contains(reason));
        }
    }
}
