//! Small SQL text helpers shared by the exporter.

/// `name` as a double-quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a single-quoted SQL string literal.
pub fn string_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A SQL expression, evaluated by SQLite itself, that turns `column` (an identifier or key
/// expression) into an exact SQL literal for every storage class.
///
/// `quote()` alone is exact for INTEGER, BLOB and NULL, but not for:
/// - finite REALs: no SQLite version reads decimal text back exactly rounded (3.40 misreads
///   even `8.085943708e-07`; newer ones misread extreme exponents), so REALs come out of
///   `printf('%!.20e')`, are read in Rust (re-read scaled by [`scaled_real_expr`] where
///   SQLite's digits are not exact) and written by [`real_literal`] as arithmetic on integers
///   that IEEE 754 evaluates exactly;
/// - ±infinity, which some SQLite versions quote as `Inf` (not importable): written `9e999`;
/// - -0.0, which `quote()` writes as `0.0` (the sign only shows through `atan2`): written
///   `-0.0`, which SQLite reads back as negative zero;
/// - TEXT with NUL (`quote()` stops at the NUL) or other control characters (the sqlite3 shell
///   drops a CR before LF inside literals): written as `CAST(X'<utf-8 hex>' AS TEXT)`, an
///   expression that restores the same bytes through every client. SQLite writes it for TEXT
///   with NUL; for the other control characters, [`control_text_literal`] rewrites what
///   `quote()` gave, which is cheaper than asking SQLite (a `GLOB '*[<controls>]*'` over every
///   TEXT value was 40% of the page queries' time).
pub fn literal_expr(column: &str) -> String {
    format!(
        "CASE typeof({c}) \
           WHEN 'real' THEN CASE \
             WHEN {c} = 9e999 THEN '9e999' \
             WHEN {c} = -9e999 THEN '-9e999' \
             WHEN {c} = 0 AND atan2({c}, -1) < 0 THEN '-0.0' \
             ELSE printf('%!.20e', {c}) END \
           WHEN 'text' THEN CASE \
             WHEN instr(CAST({c} AS BLOB), X'00') > 0 \
             THEN 'CAST(X''' || hex({c}) || ''' AS TEXT)' \
             ELSE quote({c}) END \
           ELSE quote({c}) END",
        c = column
    )
}

/// A TEXT literal as `quote()` writes it (`'…'`, quotes doubled) that holds a control character
/// (U+0001 to U+001F, U+007F), rewritten as `CAST(X'<utf-8 hex>' AS TEXT)`; `None` for every
/// other literal, which stays as it is.
pub fn control_text_literal(literal: &str) -> Option<String> {
    let inner = literal.strip_prefix('\'')?.strip_suffix('\'')?;
    if !inner.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    let text = inner.replace("''", "'");
    Some(format!("CAST(X'{}' AS TEXT)", crate::sha256::hex(text.as_bytes()).to_ascii_uppercase()))
}

/// 2^62, the largest power of two an integer literal holds.
const TWO_62: &str = "4611686018427387904";

/// `op` (`*` or `/`) applied `k` times by 2, as exact steps of at most 2^62 (integer literals,
/// which every SQLite reads exactly; scaling by a power of two is exact in IEEE 754 while the
/// result is representable).
fn pow2_steps(op: char, mut k: u32) -> String {
    let mut steps = String::new();
    while k > 0 {
        let step = k.min(62);
        steps.push(op);
        steps.push_str(&if step == 62 { TWO_62.to_string() } else { (1u64 << step).to_string() });
        k -= step;
    }
    steps
}

/// A REAL as [`literal_expr`] prints it (`printf('%!.20e')`): `Some` for a finite nonzero REAL.
pub fn printed_real(literal: &str) -> Option<f64> {
    let looks_real = literal.contains('e') && literal.trim_start_matches('-').starts_with(|c: char| c.is_ascii_digit());
    looks_real.then(|| literal.parse::<f64>().ok()).flatten().filter(|x| x.is_finite() && *x != 0.0)
}

/// Whether SQLite's printf digits may be inexact for a REAL of this size. Measured against
/// SQLite 3.51: every REAL from 2^-192 to 2^384 prints digits that read back exactly; beyond,
/// up to half do not. The margins cover the printed value being a few ULPs off.
pub fn outside_exact_print_range(x: f64) -> bool {
    let a = x.abs();
    a < 2f64.powi(-120) || a >= 2f64.powi(250)
}

/// A SQL expression printing a REAL scaled by an exact power of two into the range where
/// SQLite prints exactly: `S<k>:<digits>`, the value being `<digits> / 2^k`.
pub fn scaled_real_expr(column: &str) -> String {
    let scaled = |k: i32| {
        let steps = if k < 0 { pow2_steps('/', k.unsigned_abs()) } else { pow2_steps('*', k as u32) };
        format!("'S{k}:' || printf('%!.20e', {column}{steps})")
    };
    format!(
        "CASE WHEN typeof({c}) <> 'real' OR {c} = 0 OR abs({c}) >= 9e999 THEN NULL \
           WHEN abs({c}) >= 1e192 THEN {big} \
           WHEN abs({c}) >= 1e77 THEN {large} \
           WHEN abs({c}) < 1e-269 THEN {tiny} \
           WHEN abs({c}) < 1e-154 THEN {smaller} \
           WHEN abs({c}) < 1e-38 THEN {small} \
           ELSE {same} END",
        c = column,
        big = scaled(-768),
        large = scaled(-384),
        // 2^1152 is no double: two steps of 2^576, each exact.
        tiny = format!("'S1152:' || printf('%!.20e', {column}{}{})", pow2_steps('*', 576), pow2_steps('*', 576)),
        smaller = scaled(768),
        small = scaled(384),
        same = scaled(0),
    )
}

/// Reads what [`scaled_real_expr`] printed.
pub fn unscale_real(text: &str) -> Option<f64> {
    let (k, digits) = text.strip_prefix('S')?.split_once(':')?;
    let (k, scaled): (i32, f64) = (k.parse().ok()?, digits.parse().ok()?);
    // Undo the scaling in steps whose factors are exact doubles.
    let mut x = scaled;
    let mut rest = k;
    while rest != 0 {
        let step = rest.clamp(-576, 576);
        x *= 2f64.powi(-step);
        rest -= step;
    }
    x.is_finite().then_some(x)
}

/// A REAL as an expression every SQLite evaluates to exactly the same double, without ever
/// relying on SQLite's decimal parsing being exactly rounded (it is not):
/// - when its shortest decimal form is `d × 10^q` with `d < 2^53` and `|q| <= 18`:
///   `de0*10^q` or `de0/10^|q|`. Both operands are exact (`de0` has no scaling to do, `10^|q|`
///   is an integer literal) and IEEE 754 rounds the product or quotient to the nearest double,
///   which is the value (that is what "shortest form" means). `0.99` becomes `99e0/100`;
/// - otherwise an integer literal cast to REAL, times or divided by powers of two, each step
///   exact: `CAST(m AS REAL)/2^62/.../2^r`.
pub fn real_literal(x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 { "9e999".into() } else { "-9e999".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    if let Some((digits, q)) = shortest_decimal(x) {
        if digits < (1u64 << 53) && q.unsigned_abs() <= 18 {
            let sign = if x < 0.0 { "-" } else { "" };
            let power = 10u64.pow(q.unsigned_abs());
            return match q {
                0 => format!("{sign}{digits}e0"),
                q if q > 0 => format!("{sign}{digits}e0*{power}"),
                _ => format!("{sign}{digits}e0/{power}"),
            };
        }
    }
    let bits = x.to_bits();
    let sign = if x < 0.0 { "-" } else { "" };
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    let (mut m, mut k) = if biased == 0 { (fraction, -1074) } else { (fraction | (1u64 << 52), biased - 1075) };
    while m % 2 == 0 && k < 0 {
        m /= 2;
        k += 1;
    }
    let steps = if k < 0 { pow2_steps('/', k.unsigned_abs()) } else { pow2_steps('*', k as u32) };
    format!("(CAST({sign}{m} AS REAL){steps})")
}

/// `|x|`'s shortest round-tripping decimal form as `(digits, q)`: `|x| = digits × 10^q` once
/// read back. Rust prints the shortest form (`{:e}`: `9.9e-1`).
fn shortest_decimal(x: f64) -> Option<(u64, i32)> {
    let printed = format!("{:e}", x.abs());
    let (mantissa, exponent) = printed.split_once('e')?;
    let exponent: i32 = exponent.parse().ok()?;
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: u64 = format!("{whole}{fraction}").parse().ok()?;
    Some((digits, exponent - fraction.len() as i32))
}

/// A name made safe to stand inside a `--` comment line: control characters (a newline would
/// end the comment and turn the rest into SQL) are written as `\xNN`.
pub fn comment_safe(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_literal_forms() {
        assert_eq!(real_literal(1.5), "15e0/10");
        assert_eq!(real_literal(0.99), "99e0/100");
        assert_eq!(real_literal(123.0), "123e0");
        assert_eq!(real_literal(-0.25), "-25e0/100");
        assert_eq!(real_literal(1.5e16), "15e0*1000000000000000");
        assert_eq!(real_literal(1.0 / 3.0), "3333333333333333e0/10000000000000000");
        assert_eq!(real_literal(2f64.powi(-60) / 3.0), "(CAST(6004799503160661 AS REAL)/4611686018427387904/4503599627370496)");
        assert_eq!(real_literal(0.0), "0.0");
        assert_eq!(real_literal(-0.0), "-0.0");
        assert_eq!(real_literal(f64::NEG_INFINITY), "-9e999");
        // The smallest denormal: 1 / 2^1074, in steps of 2^62.
        let tiny = real_literal(f64::from_bits(1));
        assert!(tiny.starts_with("(CAST(1 AS REAL)/4611686018427387904/") && tiny.ends_with("/1048576)"), "{tiny}");
        let huge = real_literal(f64::MAX);
        assert!(huge.starts_with("(CAST(9007199254740991 AS REAL)*4611686018427387904*"), "{huge}");
    }

    #[test]
    fn printed_and_scaled_reals_read_back() {
        assert_eq!(printed_real("1.50000000000000000000e+00"), Some(1.5));
        for not_real in ["123", "'1e5'", "X'1E'", "NULL", "CAST(X'00' AS TEXT)", "9e999", "-0.0", "0.0e+00"] {
            assert_eq!(printed_real(not_real), None, "{not_real}");
        }
        assert_eq!(unscale_real("S384:1.5e+00"), Some(1.5 * 2f64.powi(-384)));
        assert_eq!(unscale_real(&format!("S1152:{:e}", 2f64.powi(78))), Some(f64::from_bits(1)));
        assert_eq!(unscale_real("S-768:1e+00"), Some(2f64.powi(768)));
        assert!(outside_exact_print_range(1e300) && outside_exact_print_range(-1e-300));
        assert!(!outside_exact_print_range(0.1) && !outside_exact_print_range(-1e70));
    }

    #[test]
    fn quoting() {
        assert_eq!(ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(string_literal("it's"), "'it''s'");
        assert_eq!(comment_safe("a\nb"), "a\\x0Ab");
    }
}
