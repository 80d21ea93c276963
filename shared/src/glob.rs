//! Glob-style pattern matching with Valkey's rules (KEYS, SCAN MATCH, CONFIG GET, PSUBSCRIBE):
//! `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, and `\` to escape.

/// One pattern token that matches exactly one byte, or a star.
fn token_len(p: &[u8]) -> usize {
    match p[0] {
        b'\\' if p.len() >= 2 => 2,
        b'[' => {
            let mut i = 1;
            if i < p.len() && p[i] == b'^' {
                i += 1;
            }
            while i < p.len() {
                if p[i] == b'\\' && i + 1 < p.len() {
                    i += 2;
                } else if p[i] == b']' {
                    return i + 1;
                } else {
                    i += 1;
                }
            }
            // An unclosed class runs to the end of the pattern, as in Valkey.
            p.len()
        }
        _ => 1,
    }
}

fn eq(a: u8, b: u8, nocase: bool) -> bool {
    if nocase {
        a.eq_ignore_ascii_case(&b)
    } else {
        a == b
    }
}

/// Whether the single-byte token `tok` matches `c`.
fn token_matches(tok: &[u8], c: u8, nocase: bool) -> bool {
    match tok[0] {
        b'?' => true,
        b'\\' if tok.len() == 2 => eq(tok[1], c, nocase),
        b'[' => {
            let mut body = &tok[1..];
            if body.last() == Some(&b']') {
                body = &body[..body.len() - 1];
            }
            let negate = body.first() == Some(&b'^');
            if negate {
                body = &body[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < body.len() {
                if body[i] == b'\\' && i + 1 < body.len() {
                    hit |= eq(body[i + 1], c, nocase);
                    i += 2;
                } else if i + 2 < body.len() && body[i + 1] == b'-' {
                    let (mut lo, mut hi) = (body[i], body[i + 2]);
                    if lo > hi {
                        std::mem::swap(&mut lo, &mut hi);
                    }
                    let (lo, hi, c) = if nocase {
                        (
                            lo.to_ascii_lowercase(),
                            hi.to_ascii_lowercase(),
                            c.to_ascii_lowercase(),
                        )
                    } else {
                        (lo, hi, c)
                    };
                    hit |= lo <= c && c <= hi;
                    i += 3;
                } else {
                    hit |= eq(body[i], c, nocase);
                    i += 1;
                }
            }
            hit != negate
        }
        other => eq(other, c, nocase),
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
            let len = token_len(&pattern[p..]);
            if token_matches(&pattern[p..p + len], text[t], nocase) {
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
