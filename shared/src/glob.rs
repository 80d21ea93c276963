//! Glob-style pattern matching with Valkey's rules (KEYS, SCAN MATCH, CONFIG GET, PSUBSCRIBE):
//! `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, and `\` to escape.

/// Scans the character class that starts at `p[0] == b'['` the way Valkey scans it, and says
/// how long it is and whether it matches `c`. The scan order matters: a range is recognised
/// before the closing bracket, so `[a-]` is the range `]`..`a`, and an unclosed class runs to
/// the end of the pattern.
fn class(p: &[u8], c: u8, nocase: bool) -> (usize, bool) {
    let mut i = 1;
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    loop {
        let rest = p.len() - i;
        if rest >= 2 && p[i] == b'\\' {
            i += 1;
            hit |= eq(p[i], c, nocase);
        } else if rest >= 1 && p[i] == b']' {
            i += 1;
            break;
        } else if rest == 0 {
            break;
        } else if rest >= 3 && p[i + 1] == b'-' {
            let (mut lo, mut hi) = (p[i], p[i + 2]);
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            let c = if nocase { c.to_ascii_lowercase() } else { c };
            let (lo, hi) = if nocase {
                (lo.to_ascii_lowercase(), hi.to_ascii_lowercase())
            } else {
                (lo, hi)
            };
            hit |= lo <= c && c <= hi;
            i += 2;
        } else {
            hit |= eq(p[i], c, nocase);
        }
        i += 1;
    }
    (i, hit != negate)
}

fn eq(a: u8, b: u8, nocase: bool) -> bool {
    if nocase {
        a.eq_ignore_ascii_case(&b)
    } else {
        a == b
    }
}

/// The length of the single-byte token at the start of `p`, and whether it matches `c`.
fn token(p: &[u8], c: u8, nocase: bool) -> (usize, bool) {
    match p[0] {
        b'?' => (1, true),
        b'\\' if p.len() >= 2 => (2, eq(p[1], c, nocase)),
        b'[' => class(p, c, nocase),
        other => (1, eq(other, c, nocase)),
    }
}

/// Whether `text` matches `pattern`. Runs in O(len(pattern) * len(text)) at worst: a star
/// only ever backtracks to the most recent star.
pub fn matches(pattern: &[u8], text: &[u8], nocase: bool) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            while p < pattern.len() && pattern[p] == b'*' {
                p += 1;
            }
            if p == pattern.len() {
                return true;
            }
            star = Some((p, t));
            continue;
        }
        if p < pattern.len() {
            let (len, hit) = token(&pattern[p..], text[t], nocase);
            if hit {
                p += len;
                t += 1;
                continue;
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn valkey_glob_rules() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "anything", true),
            ("*", "", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hbllo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("*a*b*c", "xaybzc", true),
            ("*a*b*c", "xaybz", false),
            ("a[\\]]b", "a]b", true),
            ("key:*", "key:1", true),
            ("[abc", "b", true),
            ("[a-]", "]", true),
            ("[a-]", "a", true),
            ("[a-]", "b", false),
            ("x[^]", "xy", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(
                matches(p.as_bytes(), t.as_bytes(), false),
                *want,
                "{p} ~ {t}"
            );
        }
        assert!(matches(b"MAX*", b"maxclients", true));
    }
}
