//! INCRBYFLOAT and HINCRBYFLOAT arithmetic on decimal text.
//!
//! Valkey reads the operands with `strtold`, adds in 80-bit long double and prints 17 digits
//! after the point with trailing zeros removed. We add the operands' exact decimals (rust
//! `Decimal`), which prints the same text for the operands people use, and fall back to f64
//! outside the decimal range.

use std::str::FromStr;

use lagwise_shared::resp::errors;
use rust_decimal::Decimal;

use super::CmdError;

/// A float as Valkey's `string2ld` reads it: decimal, scientific or hexadecimal (`strtold`),
/// no spaces, not NaN. The exact decimal too, when it has one.
pub fn parse_float_text(s: &[u8]) -> Option<(f64, Option<Decimal>)> {
    let text = std::str::from_utf8(s).ok()?;
    if text.is_empty() || text.trim() != text {
        return None;
    }
    if let Some(f) = parse_hex_float(text) {
        return Some((f, Decimal::from_str(&format!("{f}")).ok()));
    }
    let f: f64 = text.parse().ok()?;
    if f.is_nan() {
        return None;
    }
    let d = Decimal::from_str(text)
        .ok()
        .or_else(|| Decimal::from_scientific(text).ok());
    Some((f, d))
}

/// `strtold`'s hexadecimal form: `[+-]0x<hex>[.<hex>][p[+-]<dec>]`.
fn parse_hex_float(text: &str) -> Option<f64> {
    let (neg, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let rest = rest
        .strip_prefix("0x")
        .or_else(|| rest.strip_prefix("0X"))?;
    let (mantissa, exp) = match rest.find(['p', 'P']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut v = 0f64;
    for c in int.chars() {
        v = v * 16.0 + c.to_digit(16)? as f64;
    }
    let mut scale = 1.0 / 16.0;
    for c in frac.chars() {
        v += c.to_digit(16)? as f64 * scale;
        scale /= 16.0;
    }
    let v = v * 2f64.powi(exp);
    Some(if neg { -v } else { v })
}

/// The result text: 17 digits after the point, trailing zeros removed (Valkey's "human" long
/// double format), adding decimal operands exactly as INCRBYFLOAT does.
pub fn incrbyfloat_text(
    cur: (f64, Option<Decimal>),
    by: (f64, Option<Decimal>),
) -> Result<String, CmdError> {
    if let (Some(a), Some(b)) = (cur.1, by.1) {
        if let Some(sum) = a.checked_add(b) {
            let s = sum.round_dp(17).normalize().to_string();
            return Ok(if s == "-0" { "0".into() } else { s });
        }
    }
    let sum = cur.0 + by.0;
    if !sum.is_finite() {
        return Err(errors::NAN_OR_INF.into());
    }
    let mut s = format!("{sum:.17}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    Ok(if s == "-0" { "0".into() } else { s })
}

/// The value of a missing key or field: exactly 0.
pub fn zero() -> (f64, Option<Decimal>) {
    (0.0, Some(Decimal::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> (f64, Option<Decimal>) {
        parse_float_text(s.as_bytes()).expect("valid")
    }

    #[test]
    fn float_text_like_valkey() {
        assert_eq!(incrbyfloat_text(f("10.50"), f("0.1")).expect("ok"), "10.6");
        assert_eq!(incrbyfloat_text(f("0x10"), f("1")).expect("ok"), "17");
        assert_eq!(incrbyfloat_text(f("0.1"), f("-0.1")).expect("ok"), "0");
        assert_eq!(
            incrbyfloat_text(f("5.0e3"), f("2.0e2")).expect("ok"),
            "5200"
        );
        assert!(parse_float_text(b" 1").is_none());
        assert!(parse_float_text(b"nan").is_none());
        assert!(parse_float_text(b"0x").is_none());
        assert!(incrbyfloat_text(f("inf"), f("1")).is_err());
    }
}
